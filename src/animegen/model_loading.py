"""Loading a generator from any checkpoint animegen reads: its own safetensors files (training
checkpoints and G-only exports), run dirs, and the tutorial's netG_NNN.pth. The one loader that
generate, best_of, export, serve and the Python API use."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from animegen import checkpoint_format as ckpt
from animegen.config import ModelConfig
from animegen.deconv_grad import fp32_products_pay, swap_in_matmul_layers
from animegen.errors import CheckpointError, UserError
from animegen.networks import build_generator, infer_model_config, normalize_state_dict_keys
from animegen.sampling import Sampler

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
