"""Sampling faces from a trained generator: the one model loader, grids, files, interpolation."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from animegen.config import ModelConfig
from animegen.data.batches import derived_seed
from animegen.errors import CheckpointError, UserError
from animegen.models import Generator, infer_model_config, normalize_state_dict_keys
from animegen.training import checkpoint as ckpt
from animegen.training.deconv_grad import fp32_products_pay, swap_in_matmul_layers
from animegen.visual import save_grid, save_png, to_uint8

# Faces are drawn in fixed chunks: the noise of face i depends only on (seed, i // CHUNK), and with
# batch-statistics BatchNorm a face's look also depends on its batch, so batches are always whole
# chunks. Together this makes "same seed, same faces" hold whatever -n or batch size is asked for.
CHUNK = 64

# Measured on the seed architecture (README, "BatchNorm at sampling time"): the running averages
# gave samples closer to the data (SWD) than batch statistics, and make a face independent of its batch.
DEFAULT_BN_MODE = "eval"
BN_MODES = ("batch", "eval")


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


def chunk_noise(seed: int, chunk: int, z_dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(derived_seed(seed, 5, chunk))
    return torch.randn(CHUNK, z_dim, 1, 1, generator=g)


@dataclass
class LoadedGenerator:
    """A generator ready to sample, with where it came from."""

    net: Generator
    config: ModelConfig
    source: Path
    device: torch.device
    info: dict

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def noise(self, n: int, seed: int = 0) -> torch.Tensor:
        chunks = [chunk_noise(seed, c, self.z_dim) for c in range(math.ceil(n / CHUNK))]
        return torch.cat(chunks)[:n] if chunks else torch.empty(0, self.z_dim, 1, 1)

    def iter_samples(self, n: int, seed: int = 0, bn_mode: str = DEFAULT_BN_MODE) -> Iterator[torch.Tensor]:
        """uint8 batches (<= CHUNK, 3, S, S) totalling n faces; memory stays bounded for any n."""
        for c in range(math.ceil(n / CHUNK)):
            z = chunk_noise(seed, c, self.z_dim).to(self.device)
            images = sample_images(self.net, z, bn_mode)
            yield images[: min(CHUNK, n - c * CHUNK)]

    def sample(self, n: int, seed: int = 0, bn_mode: str = DEFAULT_BN_MODE, pil: bool = False):
        """n faces as a uint8 tensor (n, 3, S, S), or a list of PIL images with pil=True."""
        parts = list(self.iter_samples(n, seed, bn_mode))
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


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, list[str]]:
    """A checkpoint file, or a run dir / checkpoints dir -> its newest good checkpoint (+ notes)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.is_dir():
        ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        return ckpt.latest_good_checkpoint(ckpt_dir)
    return p, []


def _load_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """A tutorial netG_NNN.pth: tensors only, never arbitrary pickled objects."""
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it would import {found.group(1)}" if found else "unsupported content"
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects beyond plain tensors ({what}); nothing was run"
        ) from None
    except Exception as e:  # RuntimeError, EOFError, OSError, ValueError, SafetensorError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({first[:160]})") from None
    for key in ("netG", "generator", "G", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: not a generator state dict")
    return normalize_state_dict_keys(obj)


def load_generator(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    prefer_ema: bool = True,
    channels_last: bool = True,
) -> LoadedGenerator:
    """Load G from an animegen checkpoint, a run dir (its newest checkpoint) or a tutorial netG_NNN.pth.

    With channels_last (CPU and CUDA) the weights take that layout, which made the default 96 px G
    1.3x faster at sampling on a 2-core CPU (245 -> 186 ms per 64 faces); a face's pixels move by at
    most 1 in rare places (rounding order). On a CPU where PyTorch runs AVX2 kernels G's widest
    layer then draws as one matrix product. Export asks for the plain layout and PyTorch's layers.
    """
    source, notes = resolve_checkpoint(path)
    device = torch.device(device)
    info: dict = {"notes": notes}
    if not _is_safetensors(source):
        state = _load_torch_state(source)
        cfg = infer_model_config(state)
        info.update(kind="tutorial", weights="G")
    else:
        tensors, meta = ckpt.read_checkpoint(source)
        prefix = "G_ema" if prefer_ema and any(k.startswith("G_ema.") for k in tensors) else "G"
        state = ckpt.unpack_state_dict(prefix, tensors)
        cfg = model_config_from_meta(meta, source)
        info.update(
            kind=meta.get("kind"),
            epochs_done=meta.get("epochs_done"),
            iteration=meta.get("iteration"),
            weights=prefix,
        )
    net = instantiate(Generator, cfg, state, source, device)
    if channels_last and device.type in ("cpu", "cuda"):
        net.to(memory_format=torch.channels_last)
    if channels_last and device.type == "cpu" and fp32_products_pay():
        # With AVX2 kernels G's 1024 -> 512 layer draws faster as one product (training/deconv_grad.py)
        swap_in_matmul_layers(net, fp32=True)
    return LoadedGenerator(net, cfg, source, device, info)


def model_config_from_meta(meta: dict, source: Path) -> ModelConfig:
    try:
        return ModelConfig(**meta["config"]["model"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{source}: checkpoint has no usable model configuration") from None


def instantiate(
    cls: type[nn.Module], cfg: ModelConfig, state: dict[str, torch.Tensor], source: Path, device: torch.device
) -> nn.Module:
    """`cls(cfg)` with `state` loaded, on `device`, in eval mode.

    Raises a CheckpointError naming `source` when the weights do not fit the configuration.
    """
    try:
        net = cls(cfg)
    except UserError as e:
        raise CheckpointError(f"{source}: {e}") from None
    missing_or_bad = _mismatch(net, state)
    if missing_or_bad:
        what = cls.__name__.lower()
        raise CheckpointError(
            f"{source}: weights do not fit a {cfg.arch} {cfg.image_size} px {what} ({missing_or_bad})"
        )
    net.load_state_dict(state)
    net.to(device)
    net.eval()
    return net


def _is_safetensors(path: Path) -> bool:
    """Sniff the content rather than trust the suffix: 8-byte header length, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    return path.suffix.lower() == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def _mismatch(net: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing:
        return f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    if extra:
        return f"unexpected {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            return f"{k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
    return None


# ---- commands' building blocks -------------------------------------------------------------------


def write_grid(
    gen: LoadedGenerator,
    n: int,
    path: str | os.PathLike,
    nrow: int = 8,
    seed: int = 0,
    bn_mode: str = DEFAULT_BN_MODE,
) -> Path:
    images = gen.sample(n, seed=seed, bn_mode=bn_mode)
    save_grid(images, path, nrow=nrow)
    return Path(path)


def write_files(
    gen: LoadedGenerator, n: int, outdir: str | os.PathLike, seed: int = 0, bn_mode: str = DEFAULT_BN_MODE
) -> list[Path]:
    """One PNG per face, named by seed and index so runs with different seeds don't collide.

    PNG encoding (~2.4 ms a 96 px face, zlib releases the GIL) runs in two writer threads while the
    generator draws the next chunk: 1.2x the faces per second of writing in turn on 2 CPU cores. At
    most two chunks wait in the writers, so memory stays bounded for any n.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="png") as writers:
        try:
            for batch in gen.iter_samples(n, seed, bn_mode):
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
    g = torch.Generator().manual_seed(derived_seed(seed, 6))
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
