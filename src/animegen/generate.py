"""Sampling faces from a trained generator: grids, files, interpolation (loading: model_loading.py)."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from animegen.errors import UserError
from animegen.model_loading import LoadedGenerator
from animegen.sampling import CHUNK, DEFAULT_BN_MODE
from animegen.streams import INTERPOLATION, derived_seed
from animegen.visual import save_grid, save_png


def write_grid(
    gen: LoadedGenerator,
    n: int,
    path: str | os.PathLike,
    nrow: int = 8,
    seed: int = 0,
    bn_mode: str = DEFAULT_BN_MODE,
    truncation: float | None = None,
) -> Path:
    images = gen.sample(n, seed=seed, bn_mode=bn_mode, truncation=truncation)
    save_grid(images, path, nrow=nrow)
    return Path(path)


def write_files(
    gen: LoadedGenerator,
    n: int,
    outdir: str | os.PathLike,
    seed: int = 0,
    bn_mode: str = DEFAULT_BN_MODE,
    truncation: float | None = None,
) -> list[Path]:
    """One PNG per face, named by seed and index so runs with different seeds don't collide.

    PNG encoding (zlib releases the GIL) runs in two writer threads while the generator draws the
    next chunk, which is faster than writing in turn (docs/design-notes.md). At most two chunks
    wait in the writers, so memory stays bounded for any n.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="png") as writers:
        try:
            for batch in gen.iter_samples(n, seed, bn_mode, truncation):
                while len(pending) > CHUNK:
                    pending.popleft().result()
                for img in batch.permute(0, 2, 3, 1).numpy():
                    p = outdir / f"seed{seed}_{len(paths):06d}.png"
                    pending.append(writers.submit(save_png, img, p))
                    paths.append(p)
            for job in pending:
                job.result()
        except BaseException:
            writers.shutdown(cancel_futures=True)  # a failed write or Ctrl-C: drop the queued faces
            raise
    return paths


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latent batches a, b (N, z) at fractions t (T,) -> (T, N, z)."""
    an = a / a.norm(dim=-1, keepdim=True)
    bn = b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1).clamp(-1 + 1e-7, 1 - 1e-7))  # (N,)
    so = torch.sin(omega)
    t = t[:, None, None]
    return (torch.sin((1 - t) * omega[None, :, None]) / so[None, :, None]) * a + (
        torch.sin(t * omega[None, :, None]) / so[None, :, None]
    ) * b


def interpolation_latents(z_dim: int, steps: int, keyframes: int = 4, seed: int = 0) -> torch.Tensor:
    """`steps` latents walking through `keyframes` random points and back to the first (a seamless loop)."""
    if steps < 2:
        raise UserError("--steps must be at least 2")
    g = torch.Generator().manual_seed(derived_seed(seed, INTERPOLATION))
    keys = torch.randn(keyframes, z_dim, generator=g)
    keys = torch.cat([keys, keys[:1]])
    positions = torch.arange(steps, dtype=torch.float64) * keyframes / steps
    out = []
    for pos in positions:
        i = min(int(pos), keyframes - 1)
        frac = torch.tensor([float(pos) - i])
        out.append(slerp(keys[i : i + 1], keys[i + 1 : i + 2], frac)[0, 0])
    return torch.stack(out)


def write_interpolation(
    gen: LoadedGenerator,
    out: str | os.PathLike,
    steps: int = 60,
    seed: int = 0,
    keyframes: int = 4,
    fps: int = 15,
    bn_mode: str = DEFAULT_BN_MODE,
    scale: int = 1,
) -> Path:
    """A looping walk through latent space as GIF (Pillow) or MP4 (needs imageio-ffmpeg)."""
    out = Path(out)
    z = interpolation_latents(gen.z_dim, steps, keyframes, seed)
    frames = gen.from_latents(z, bn_mode).permute(0, 2, 3, 1).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    from PIL import Image

    pil = [Image.fromarray(f) for f in frames]
    if scale > 1:
        pil = [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in pil]
    if suffix == ".gif":
        pil[0].save(out, save_all=True, append_images=pil[1:], duration=round(1000 / fps), loop=0)
    elif suffix == ".mp4":
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401 - only checks that the encoder is there
        except ImportError:
            raise UserError(
                f"{out}: MP4 needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg); "
                "or write a .gif"
            ) from None
        import numpy as np

        with imageio.get_writer(out, fps=fps, macro_block_size=1) as writer:
            for im in pil:
                writer.append_data(np.asarray(im))
    else:
        raise UserError(f"{out}: unknown animation format {suffix or '(none)'} (use .gif or .mp4)")
    return out
