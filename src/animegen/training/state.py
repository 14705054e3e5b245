"""A training run's state in a checkpoint: packing it (weights, EMA, optimisers, RNGs, position,
clocks, best evaluation, health) and restoring it, so a resumed run continues exactly; and the
checkpoint folder (naming, pruning, the best checkpoint)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from animegen import checkpoint_format as ckpt
from animegen.data.cache import ImageSet
from animegen.errors import CheckpointError, UserError
from animegen.training.augment import AugmentStrength
from animegen.training.clock import RunClock
from animegen.training.run import Run

BEST_NAME = "best.safetensors"


@dataclass
class Position:
    """Where the run stands: the next batch to train is `step` of `epoch` (both 0-based)."""

    epoch: int = 0
    step: int = 0
    iteration: int = 0


def pack_state(
    run: Run,
    sampling_net: torch.nn.Module,
    augment_strength: AugmentStrength | None,
    pos: Position,
    steps_per_epoch: int,
    images: ImageSet | None,
    clock: RunClock,
    best: dict[str, Any],
    health: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Everything a resumed run needs, as safetensors tensors and JSON metadata.

    `sampling_net` is what G_ema holds (the calibrated EMA copy); `health` the health monitor's
    state with the roll-back flag."""
    tensors: dict[str, torch.Tensor] = {}
    tensors.update(ckpt.pack_state_dict("G", run.netG.state_dict()))
    tensors.update(ckpt.pack_state_dict("D", run.netD.state_dict()))
    if run.ema is not None:
        tensors.update(ckpt.pack_state_dict("G_ema", sampling_net.state_dict()))
        tensors["ema.n_averaged"] = run.ema.n_averaged
    tg, mg = ckpt.pack_optimizer("optG", run.optG)
    td, md = ckpt.pack_optimizer("optD", run.optD)
    tr, mr = ckpt.capture_rng()
    if augment_strength is not None:
        tensors.update(augment_strength.state())
    if run.lecam is not None:
        tensors.update(run.lecam.state())
    tensors.update(tg)
    tensors.update(td)
    tensors.update(tr)
    meta = {
        "kind": "training",
        "config": run.cfg.to_dict(),
        "epoch": pos.epoch,
        "step": pos.step,
        "iteration": pos.iteration,
        "epochs_done": epochs_done(pos, steps_per_epoch),
        "steps_per_epoch": steps_per_epoch,
        "data_key": images.key if images else None,
        "data_count": len(images) if images else 0,
        "wall_time": clock.wall(),
        "eval_seconds": clock.eval_seconds,
        "optG": mg,
        "optD": md,
        "rng": mr,
        "best": best,
        "health": health,
    }
    return tensors, meta


def epochs_done(pos: Position, steps_per_epoch: int) -> int:
    return pos.epoch + (1 if pos.step >= steps_per_epoch else 0)


@dataclass
class Restored:
    """What a checkpoint says about the run besides its weights (already loaded)."""

    pos: Position
    wall_time: float
    eval_seconds: float
    best: dict[str, Any]
    health: dict[str, Any]
    rolled_back: bool
    data_key: str | None
    data_count: int | None


def restore_state(path: Path, run: Run, augment_strength: AugmentStrength | None) -> Restored:
    """Load a training checkpoint's weights, EMA, optimisers, RNGs and augmentation strength into
    `run`; the rest comes back as a Restored."""
    tensors, meta = ckpt.read_checkpoint(path)
    if meta.get("kind") != "training":
        raise CheckpointError(f"{path}: holds only a generator; training cannot resume from it")
    try:
        run.netG.load_state_dict(ckpt.unpack_state_dict("G", tensors))
        run.netD.load_state_dict(ckpt.unpack_state_dict("D", tensors))
        ckpt.load_optimizer(run.optG, "optG", tensors, meta["optG"])
        ckpt.load_optimizer(run.optD, "optD", tensors, meta["optD"])
        if run.ema is not None:
            ema_state = ckpt.unpack_state_dict("G_ema", tensors)
            if ema_state:
                run.ema.module.load_state_dict(ema_state)
                run.ema.n_averaged.copy_(tensors["ema.n_averaged"])
            else:  # EMA switched on for a run that had none: start it from the current G
                run.ema.module.load_state_dict(run.netG.state_dict())
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: does not fit this configuration ({first})") from None
    ckpt.restore_rng(tensors, meta.get("rng", {}))
    if augment_strength is not None:
        augment_strength.load(tensors)
    if run.lecam is not None:
        run.lecam.load(tensors)
    health = dict(meta.get("health") or {})
    return Restored(
        pos=Position(meta["epoch"], meta["step"], meta["iteration"]),
        wall_time=float(meta.get("wall_time", 0.0)),
        eval_seconds=float(meta.get("eval_seconds", 0.0)),
        best=dict(meta.get("best") or {}),
        rolled_back=bool(health.pop("rolled_back", False)),
        health=health,
        data_key=meta.get("data_key"),
        data_count=meta.get("data_count"),
    )


class Checkpoints:
    """A run's checkpoints/ folder: numbered checkpoints, the newest `keep` kept, and best.safetensors."""

    def __init__(self, folder: Path, keep: int, warn: Callable[[str], None]):
        self.folder = Path(folder)
        self.keep = keep
        self.warn = warn

    def path(self, epochs: int, iteration: int) -> Path:
        return self.folder / ckpt.checkpoint_name(epochs, iteration)

    def save(self, path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            ckpt.save_checkpoint(path, tensors, meta)
        except OSError as e:
            kept = ckpt.list_checkpoints(self.folder)
            previous = f"; the previous checkpoint {kept[-1].name} is intact" if kept else ""
            raise UserError(f"{path}: checkpoint write failed ({e.strerror or e}){previous}") from None
        ckpt.prune_checkpoints(self.folder, self.keep)

    def save_best(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        path = self.folder / BEST_NAME
        try:
            ckpt.save_checkpoint(path, tensors, meta)
        except OSError as e:
            self.warn(f"{path}: could not write the best checkpoint ({e.strerror or e})")

    def latest_good(self) -> Path:
        """The newest checkpoint that verifies; CheckpointError when there is none."""
        path, _notes = ckpt.latest_good_checkpoint(self.folder)
        return path

    def best_on_disk(self, best: dict[str, Any]) -> dict[str, Any]:
        """The better of `best` and what best.safetensors records.

        An evaluation can write best.safetensors after the newest regular checkpoint; a resume or a
        roll-back to that checkpoint must not later replace the better file with a worse one.
        """
        path = self.folder / BEST_NAME
        if not path.exists():
            return best
        try:
            _, meta = ckpt.read_checkpoint(path)
        except CheckpointError:
            return best
        on_disk = meta.get("best") or {}
        if not best or (
            on_disk.get("metric") == best.get("metric") and on_disk.get("score", math.inf) < best["score"]
        ):
            return dict(on_disk) or best
        return best
