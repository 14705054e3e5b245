"""Compute FID (Fréchet Inception Distance) and KID (Kernel Inception Distance) from feature arrays.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to the two feature sets. KID
(Bińkowski et al. 2018) is the unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets as in stylegan2-ada-pytorch. Both work on any N x d float arrays; for the
usual metrics feed them :func:`animegen.metrics.inception.inception_features`. Only numpy is needed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_statistics", "fid_from_features", "frechet_distance", "kid_from_features"]


def _as_features(feats: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array N x d, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return arr


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) of an N x d feature array, float64; needs N >= 2."""
    arr = _as_features(feats, "feats")
    if arr.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {arr.shape[0]}")
    return arr.mean(axis=0), np.cov(arr, rowvar=False)


def _psd_sqrt(sym: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(sym)
    # Covariances are PSD; eigenvalues slightly below zero are rounding noise (and rank-deficient
    # covariances, N < d, are the normal case for FID on small samples).
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    tr((S1 S2)^(1/2)) is computed as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): that matrix is symmetric PSD, so
    two symmetric eigendecompositions suffice. Unlike scipy.linalg.sqrtm on the non-symmetric S1 S2 this
    never produces complex parts, stays accurate for singular covariances and is several times faster.
    """
    m1 = np.asarray(mu1, dtype=np.float64)
    m2 = np.asarray(mu2, dtype=np.float64)
    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    d = m1.shape[0] if m1.ndim == 1 else -1
    if m1.ndim != 1 or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {m1.shape}, sigma1 {s1.shape}, mu2 {m2.shape}, sigma2 {s2.shape}"
        )
    for name, arr in (("mu1", m1), ("sigma1", s1), ("mu2", m2), ("sigma2", s2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or inf")
    # Symmetrise: covariances read from disk or accumulated in float32 may be off by rounding.
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    # The true distance is >= 0; a tiny negative is cancellation error for (near) identical inputs.
    return max(value, 0.0)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two N x d feature arrays (each needs N >= 2; the usual practice is N >= 10000)."""
    a = _as_features(feats1, "feats1")
    b = _as_features(feats2, "feats2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    mu1, sigma1 = feature_statistics(a)
    mu2, sigma2 = feature_statistics(b)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def kid_from_features(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID between two N x d feature arrays: (mean, std) of the unbiased MMD^2 over random subsets.

    Each subset draws m = min(N1, N2, max_subset_size) rows from each set without replacement. The
    estimate is unbiased, so it can be slightly negative when the sets come from one distribution. The
    std is over subsets (spread of the estimate, not a standard error). Deterministic given ``seed``.
    When subsets are the whole of both sets every one gives the same value, so it is computed once
    and the std is 0 by construction.
    """
    a = _as_features(feats1, "feats1")
    b = _as_features(feats2, "feats2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    d = a.shape[1]
    m = min(a.shape[0], b.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got {a.shape[0]} and {b.shape[0]}")
    if m == a.shape[0] == b.shape[0]:
        num_subsets = 1  # the unbiased MMD^2 does not depend on the order of rows
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        # Unbiased: within-set sums leave out the diagonal (k(x_i, x_i)), the cross term keeps all pairs.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2.0 * kxy.sum() / (m * m)
    return float(values.mean()), float(values.std())
