"""A feature space for judging anime faces that has never seen ImageNet: the ruler behind FD-SSL.

Inception FID and KID can be lowered without better faces by a discriminator built on ImageNet
features (Kynkaanniemi et al., ICLR 2023): it learns to match exactly the statistics Inception
measures. FD-SSL is the same Frechet distance in the features of :class:`FaceEncoder`, a small
residual CNN trained self-supervised (SimCLR) on anime faces only, never on labels, never on
ImageNet; `animegen/metrics/train_face_encoder.py` is the code that trained the shipped weights.

Features are the globally pooled activations of its last three stages (64 + 128 + 256 channels,
so texture at 16x16 as well as layout at 4x4 counts), each dimension standardised by its mean and
spread over the encoder's training faces so no stage dominates the distance. Inputs of any size
are resized to the encoder's 64 px with antialiasing. docs/quality.md says how well it ranks
known damage and generated sets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from animegen.errors import UserError

__all__ = [
    "DEFAULT_WEIGHTS",
    "INPUT_SIZE",
    "FaceEncoder",
    "FaceFeatures",
    "face_features",
]

INPUT_SIZE = 64
DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "face_encoder.safetensors"


class _Block(nn.Module):
    """A ResNet basic block (two 3x3 convolutions and a shortcut), optionally halving the side."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class FaceEncoder(nn.Module):
    """64 px RGB in [-1, 1] -> pooled features of its last three stages (7 * width channels).

    `width` is the first stage's channels; the stages have width, 2, 4 and 8 times it at 32, 16, 8
    and 4 px. `feature_mean`/`feature_std` standardise the features (set after training).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = width
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.ModuleList(
            [_Block(w, w, 1), _Block(w, 2 * w, 2), _Block(2 * w, 4 * w, 2), _Block(4 * w, 8 * w, 2)]
        )
        self.feature_dim = 14 * w
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.feature_dim))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Unstandardised features: the mean of each of the last three stages' channels."""
        h = self.stem(x)
        pooled = []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i >= 1:
                pooled.append(h.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.pooled(x) - self.feature_mean) / self.feature_std


def to_input(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N x 3 x H x W -> float N x 3 x 64 x 64 in [-1, 1] (antialiased bilinear resize)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images N x 3 x H x W, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images N x 3 x H x W, got shape {tuple(images.shape)}")
    x = images.to(device=device, dtype=torch.float32) / 127.5 - 1.0
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True)
    return x


def save_encoder(encoder: FaceEncoder, path: Path, info: dict) -> None:
    """Weights as fp32 safetensors; `info` (how it was trained) goes into the file's metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().contiguous() for k, v in encoder.state_dict().items()}
    meta = {"width": str(encoder.width), "info": json.dumps(info, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_encoder(path: str | Path | None = None) -> tuple[FaceEncoder, dict]:
    """The encoder stored at `path` (default: the shipped weights) in eval mode, and its training info."""
    p = Path(path).expanduser() if path is not None else DEFAULT_WEIGHTS
    if not p.is_file():
        raise UserError(f"{p}: face-encoder weights not found")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        width = int(meta.get("width", "0"))
        encoder = FaceEncoder(width)
        encoder.load_state_dict(load_file(str(p)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p}: not face-encoder weights ({first})") from None
    return encoder.eval(), json.loads(meta.get("info", "{}"))


class FaceFeatures:
    """The frozen face encoder as a callable: uint8 RGB batch N x 3 x H x W -> float32 N x D.

    `id` names the weights (the first 12 hex digits of the file's SHA-256): FD-SSL values compare
    only between evaluations with the same id.
    """

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        p = Path(path).expanduser() if path is not None else DEFAULT_WEIGHTS
        encoder, self.info = load_encoder(p)
        self.id = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        self.encoder = encoder.to(self.device)
        self.dim = encoder.feature_dim
        self.real_cache: dict[str, np.ndarray] = {}  # features of real face sets, by the caller's key

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(to_input(images, self.device)).float()


def face_features(
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    extractor: FaceFeatures | None = None,
    batch_size: int = 250,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Face-encoder features of uint8 images (one tensor or an iterable of batches), float64 N x D."""
    net = extractor if extractor is not None else FaceFeatures()
    chunks = [images] if isinstance(images, torch.Tensor) else images
    out: list[np.ndarray] = []
    for chunk in chunks:
        for start in range(0, chunk.shape[0], batch_size):
            batch = chunk[start : start + batch_size]
            if batch.shape[0]:
                out.append(net(batch).cpu().numpy().astype(np.float64))
                if progress is not None:
                    progress(batch.shape[0])
    if not out:
        return np.zeros((0, net.dim), dtype=np.float64)
    return np.concatenate(out, axis=0)
