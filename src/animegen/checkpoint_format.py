"""Checkpoints: one safetensors file holding weights, optimizer states, RNG states and JSON metadata.

Nothing is pickled: tensors are safetensors, everything else is JSON in the file's metadata. A
SHA-256 over the metadata and every tensor's bytes detects a truncated or bit-flipped file, and
files are written to a temp name, fsynced and renamed, so a kill at any moment leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from animegen.errors import CheckpointError

FORMAT = "animegen-checkpoint/1"
CKPT_RE = re.compile(r"^ckpt_e(\d+)_i(\d+)\.safetensors$")


def checkpoint_name(epoch: int, iteration: int) -> str:
    return f"ckpt_e{epoch:03d}_i{iteration:08d}.safetensors"


def _digest(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(meta_json.encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes so that `path` is either the old file or the complete new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = dict(meta, format=FORMAT)
    meta_json = json.dumps(meta, sort_keys=True)
    digest = _digest(meta_json, tensors)
    data = st_save(tensors, metadata={"animegen": meta_json, "sha256": digest})
    write_atomic(Path(path), data)


def read_checkpoint(
    path: str | os.PathLike, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta); raises CheckpointError naming the file when it is damaged or not ours."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    if len(data) < 8:
        raise CheckpointError(f"{path}: checkpoint is truncated ({len(data)} bytes)")
    try:
        header_len = int.from_bytes(data[:8], "little")
        if header_len <= 0 or 8 + header_len > len(data):
            raise ValueError("header length out of range")
        header = json.loads(data[8 : 8 + header_len])
        file_meta = header.get("__metadata__") or {}
        tensors = st_load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as e:
        reason = (
            "truncated"
            if isinstance(e, ValueError) and "range" in str(e)
            else "not a readable safetensors file"
        )
        raise CheckpointError(f"{path}: checkpoint is damaged ({reason})") from None
    meta_json = file_meta.get("animegen")
    if meta_json is None:
        raise CheckpointError(f"{path}: not an animegen checkpoint (no animegen metadata)")
    if verify:
        expected = file_meta.get("sha256")
        if expected != _digest(meta_json, tensors):
            raise CheckpointError(f"{path}: checkpoint is damaged (checksum mismatch)")
    try:
        meta = json.loads(meta_json)
    except ValueError:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON") from None
    return tensors, meta


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints in a folder, oldest first (by iteration, then epoch)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = CKPT_RE.match(p.name)
        if m:
            found.append(((int(m.group(2)), int(m.group(1))), p))
    return [p for _, p in sorted(found)]


def latest_good_checkpoint(ckpt_dir: str | os.PathLike) -> tuple[Path, list[str]]:
    """The newest checkpoint that verifies, and one-line notes about newer ones that did not."""
    notes: list[str] = []
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            read_checkpoint(path)
        except CheckpointError as e:
            notes.append(str(e))
            continue
        return path, notes
    if notes:
        raise CheckpointError(f"{ckpt_dir}: no usable checkpoint ({notes[0]})")
    raise CheckpointError(f"{ckpt_dir}: no checkpoints found")


def prune_checkpoints(ckpt_dir: str | os.PathLike, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass


# ---- packing PyTorch objects into flat tensors + JSON ---------------------------------------------


def pack_state_dict(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unpack_state_dict(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


def pack_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unpack_optimizer(prefix: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    p = prefix + "."
    for key, value in tensors.items():
        if key.startswith(p):
            idx, name = key[len(p) :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def load_optimizer(
    opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Load an optimizer's state from a checkpoint, keeping this run's kernel and parameter layouts.

    The kernel (fused, foreach, capturable) is a setting of this run, not state, so a resume may
    change it; each step counter then goes where this run's kernel keeps it (PyTorch places it by
    the checkpoint's kernel, so a CUDA run resumed with --cuda-graph would find it on the host).
    The moments come back contiguous from safetensors; each gets its parameter's strides, since
    PyTorch's fused CPU Adam walks a parameter and its moments as flat memory without checking
    that they match (torch 2.14): a channels_last weight would be updated from the wrong elements.
    """
    kernel = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in opt.param_groups]
    opt.load_state_dict(unpack_optimizer(prefix, tensors, meta))
    for group, keep in zip(opt.param_groups, kernel, strict=True):
        group.update(keep)
        for param in group["params"]:
            state = opt.state.get(param, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(step_device(group, param))
    for param, state in opt.state.items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def step_device(group: dict[str, Any], param: torch.Tensor) -> torch.device:
    """Where PyTorch's Adam keeps a parameter's step counter: beside the parameter for the fused
    and capturable kernels (they advance it on the device), on the host for the others."""
    return param.device if group.get("fused") or group.get("capturable") else torch.device("cpu")


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every global RNG the process may draw from: Python, NumPy, torch CPU and each CUDA device."""
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    tensors["rng.numpy_keys"] = torch.from_numpy(
        np.asarray(np_state[1], dtype=np.uint32).view(np.int32).copy()
    )
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    if "rng.torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        for i, s in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if "python" in meta:
        v, state, gauss = meta["python"]
        random.setstate((v, tuple(state), gauss))
    if "numpy" in meta and "rng.numpy_keys" in tensors:
        name, pos, has_gauss, cached = meta["numpy"]
        keys = tensors["rng.numpy_keys"].numpy().view(np.uint32)
        np.random.set_state((name, keys, pos, has_gauss, cached))
