"""Evaluate generated images: FID, KID, precision/recall on Inception features, and SWD on pixels.

Everything takes uint8 RGB tensors N x 3 x H x W or feature arrays, so it is independent of the models.
The Inception weights come from the optional dependency ``animegen[metrics]``; SWD needs nothing extra.
"""

from animegen.metrics.fid import feature_statistics, fid_from_features, frechet_distance, kid_from_features
from animegen.metrics.inception import (
    FEATURE_DIM,
    InceptionFeatures,
    MetricsUnavailable,
    default_inception_path,
    inception_features,
)
from animegen.metrics.prdc import precision_recall
from animegen.metrics.swd import swd, swd_resolutions

__all__ = [
    "FEATURE_DIM",
    "InceptionFeatures",
    "MetricsUnavailable",
    "default_inception_path",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "kid_from_features",
    "precision_recall",
    "swd",
    "swd_resolutions",
]
