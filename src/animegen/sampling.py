"""Drawing faces from a generator in memory: BatchNorm's sampling mode, the fixed noise chunks, and
`Sampler`, which generation, evaluation, export, the web page and training's evaluations all use.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from animegen.config import ModelConfig
from animegen.errors import UserError
from animegen.sampling_options import BN_MODES, CHUNK, DEFAULT_BN_MODE
from animegen.streams import CHUNK_NOISE, derived_seed
from animegen.visual import to_uint8

__all__ = [
    "BN_MODES",
    "CHUNK",
    "DEFAULT_BN_MODE",
    "Sampler",
    "bn_mode_context",
    "chunk_noise",
    "check_truncation",
    "sample_images",
    "truncated_normal",
]


@contextlib.contextmanager
def bn_mode_context(net: nn.Module, bn_mode: str) -> Iterator[None]:
    """Run `net` with BatchNorm in the given mode without touching its running statistics."""
    if bn_mode not in BN_MODES:
        raise UserError(f"--bn must be one of {', '.join(BN_MODES)}, not {bn_mode!r}")
    was_training = net.training
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m.track_running_stats for m in bns]
    try:
        if bn_mode == "batch":
            net.train()
            # Train mode with tracking off uses the batch statistics and leaves the buffers alone.
            for m in bns:
                m.track_running_stats = False
        else:
            net.eval()
        yield
    finally:
        for m, t in zip(bns, tracked, strict=True):
            m.track_running_stats = t
        net.train(was_training)


@torch.no_grad()
def sample_images(net: nn.Module, noise: torch.Tensor, bn_mode: str = DEFAULT_BN_MODE) -> torch.Tensor:
    """uint8 (B, 3, S, S) on the CPU from noise (B, z, 1, 1)."""
    with bn_mode_context(net, bn_mode):
        return to_uint8(net(noise))


def check_truncation(truncation: float | None) -> None:
    if truncation is not None and not (truncation > 0 and math.isfinite(truncation)):
        raise UserError(f"truncation must be a positive number (e.g. 2.0), not {truncation}")


def truncated_normal(shape: tuple[int, ...], truncation: float, generator: torch.Generator) -> torch.Tensor:
    """N(0, 1) restricted to [-truncation, truncation] (BigGAN's truncation trick), by inverse CDF.

    Each entry is the quantile of one uniform draw, so a seed keeps its place in the distribution
    as the truncation changes: the same face drifts towards the typical one as the value shrinks.
    """
    low = torch.special.ndtr(torch.tensor(-float(truncation), dtype=torch.float64))
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return torch.special.ndtri(low + u * (1 - 2 * low)).float()


def chunk_noise(seed: int, chunk: int, z_dim: int, truncation: float | None = None) -> torch.Tensor:
    """The latents of one chunk of faces of `seed`; `truncation` draws them from the truncated normal."""
    g = torch.Generator().manual_seed(derived_seed(seed, CHUNK_NOISE, chunk))
    if truncation is None:
        return torch.randn(CHUNK, z_dim, 1, 1, generator=g)
    check_truncation(truncation)
    return truncated_normal((CHUNK, z_dim, 1, 1), truncation, g)


@dataclass
class Sampler:
    """A generator ready to sample, with where it came from (a checkpoint, or a training iteration)."""

    net: nn.Module
    config: ModelConfig
    source: Path
    device: torch.device
    info: dict = field(default_factory=dict)

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def noise(self, n: int, seed: int = 0, truncation: float | None = None) -> torch.Tensor:
        chunks = [chunk_noise(seed, c, self.z_dim, truncation) for c in range(math.ceil(n / CHUNK))]
        return torch.cat(chunks)[:n] if chunks else torch.empty(0, self.z_dim, 1, 1)

    def iter_samples(
        self, n: int, seed: int = 0, bn_mode: str = DEFAULT_BN_MODE, truncation: float | None = None
    ) -> Iterator[torch.Tensor]:
        """uint8 batches (<= CHUNK, 3, S, S) totalling n faces; memory stays bounded for any n.

        `truncation` (e.g. 2.0): latents from N(0, 1) cut at +-truncation, a little variety for
        slightly cleaner faces; low values wash faces out (docs/quality.md); None draws plain N(0, 1).
        """
        check_truncation(truncation)
        for c in range(math.ceil(n / CHUNK)):
            z = chunk_noise(seed, c, self.z_dim, truncation).to(self.device)
            images = sample_images(self.net, z, bn_mode)
            yield images[: min(CHUNK, n - c * CHUNK)]

    def sample(
        self,
        n: int,
        seed: int = 0,
        bn_mode: str = DEFAULT_BN_MODE,
        pil: bool = False,
        truncation: float | None = None,
    ):
        """n faces as a uint8 tensor (n, 3, S, S), or a list of PIL images with pil=True."""
        parts = list(self.iter_samples(n, seed, bn_mode, truncation))
        images = (
            torch.cat(parts) if parts else torch.empty(0, 3, self.config.image_size, self.config.image_size)
        )
        if pil:
            from PIL import Image

            return [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        return images

    @torch.no_grad()
    def from_latents(self, z: torch.Tensor, bn_mode: str = DEFAULT_BN_MODE) -> torch.Tensor:
        """uint8 images for given latents, all in one batch (so batch-statistics BN sees them together)."""
        return sample_images(self.net, z.to(self.device).reshape(len(z), self.z_dim, 1, 1), bn_mode)
