"""Sampling faces from a trained generator: the one model loader, grids, files, interpolation."""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from animegen import checkpoint_format as ckpt
from animegen.config import ModelConfig
from animegen.deconv_grad import fp32_products_pay, swap_in_matmul_layers
from animegen.errors import CheckpointError, UserError
from animegen.models import build_generator, infer_model_config, normalize_state_dict_keys
from animegen.sampling import CHUNK, DEFAULT_BN_MODE, Sampler
from animegen.streams import INTERPOLATION, derived_seed
from animegen.visual import save_grid, save_png

# A loaded generator is a Sampler that came from a file; the name stays for the Python API.
LoadedGenerator = Sampler


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

    With channels_last (CPU and CUDA) the weights take that layout, which samples faster; a face's
    pixels move by at most 1 in rare places (rounding order; docs/design-notes.md). On a CPU where
    PyTorch runs AVX2 kernels G's widest layer then draws as one matrix product. Export asks for the
    plain layout and PyTorch's layers.
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
    net = instantiate(build_generator, cfg, state, source, device)
    if channels_last and device.type in ("cpu", "cuda"):
        net.to(memory_format=torch.channels_last)
    if channels_last and device.type == "cpu" and fp32_products_pay():
        # With AVX2 kernels G's 1024 -> 512 layer draws faster as one product (deconv_grad.py)
        swap_in_matmul_layers(net, fp32=True)
    return LoadedGenerator(net, cfg, source, device, info)


def model_config_from_meta(meta: dict, source: Path) -> ModelConfig:
    try:
        return ModelConfig(**meta["config"]["model"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{source}: checkpoint has no usable model configuration") from None


def instantiate(
    build: Callable[[ModelConfig], nn.Module],
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    source: Path,
    device: torch.device,
) -> nn.Module:
    """`build(cfg)` with `state` loaded, on `device`, in eval mode.

    Raises a CheckpointError naming `source` when the weights do not fit the configuration.
    """
    try:
        net = build(cfg)
    except UserError as e:
        raise CheckpointError(f"{source}: {e}") from None
    missing_or_bad = _mismatch(net, state)
    if missing_or_bad:
        what = "discriminator" if "discriminator" in build.__name__ else "generator"
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
