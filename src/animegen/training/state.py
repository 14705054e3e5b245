"""A training run's state in a checkpoint: packing it (weights, EMA, optimisers, RNGs, position,
clocks, best evaluation, health) and restoring it, so a resumed run continues exactly."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from animegen import checkpoint_format as ckpt
from animegen.errors import CheckpointError, UserError

BEST_NAME = "best.safetensors"


@dataclass
class Position:
    """Where the run stands: the next batch to train is `step` of `epoch` (both 0-based)."""

    epoch: int = 0
    step: int = 0
    iteration: int = 0


class TrainingState:
    """The trainer's checkpoint side (a mixin of training/loop.py's Trainer, whose attributes it reads)."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        tensors.update(ckpt.pack_state_dict("G", self.netG.state_dict()))
        tensors.update(ckpt.pack_state_dict("D", self.netD.state_dict()))
        if self.ema is not None:
            tensors.update(ckpt.pack_state_dict("G_ema", self._sampling_net().state_dict()))
            tensors["ema.n_averaged"] = self.ema.n_averaged
        tg, mg = ckpt.pack_optimizer("optG", self.optG)
        td, md = ckpt.pack_optimizer("optD", self.optD)
        tr, mr = ckpt.capture_rng()
        if self.augment_strength is not None:
            tensors.update(self.augment_strength.state())
        tensors.update(tg)
        tensors.update(td)
        tensors.update(tr)
        meta = {
            "kind": "training",
            "config": self.cfg.to_dict(),
            "epoch": self.pos.epoch,
            "step": self.pos.step,
            "iteration": self.pos.iteration,
            "epochs_done": self._epochs_done(),
            "steps_per_epoch": len(self.feeder),
            "data_key": self.images.key if self.images else None,
            "data_count": len(self.images) if self.images else 0,
            "wall_time": self.wall_offset + (time.perf_counter() - self._t_start),
            "eval_seconds": self.eval_seconds,
            "optG": mg,
            "optD": md,
            "rng": mr,
            "best": self.best,
            "health": {**self.health.state_dict(), "rolled_back": self.rolled_back},
        }
        return tensors, meta

    def _epochs_done(self) -> int:
        return self.pos.epoch + (1 if self.pos.step >= len(self.feeder) else 0)

    def save_checkpoint(self) -> Path:
        path = self.ckpt_dir / ckpt.checkpoint_name(self._epochs_done(), self.pos.iteration)
        if not self.dist.is_main:
            # Only rank 0 writes; packing here would also rebuild and calibrate an EMA copy for nothing.
            self._last_checkpoint_at = time.perf_counter()
            return path
        tensors, meta = self.state()
        try:
            ckpt.save_checkpoint(path, tensors, meta)
        except OSError as e:
            kept = ckpt.list_checkpoints(self.ckpt_dir)
            previous = f"; the previous checkpoint {kept[-1].name} is intact" if kept else ""
            raise UserError(f"{path}: checkpoint write failed ({e.strerror or e}){previous}") from None
        ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints)
        self._last_checkpoint_at = time.perf_counter()
        return path

    def _restore(self, path: Path) -> None:
        tensors, meta = ckpt.read_checkpoint(path)
        if meta.get("kind") != "training":
            raise CheckpointError(f"{path}: holds only a generator; training cannot resume from it")
        try:
            self.netG.load_state_dict(ckpt.unpack_state_dict("G", tensors))
            self.netD.load_state_dict(ckpt.unpack_state_dict("D", tensors))
            ckpt.load_optimizer(self.optG, "optG", tensors, meta["optG"])
            ckpt.load_optimizer(self.optD, "optD", tensors, meta["optD"])
            if self.ema is not None:
                ema_state = ckpt.unpack_state_dict("G_ema", tensors)
                if ema_state:
                    self.ema.module.load_state_dict(ema_state)
                    self.ema.n_averaged.copy_(tensors["ema.n_averaged"])
                else:  # EMA switched on for a run that had none: start it from the current G
                    self.ema.module.load_state_dict(self.netG.state_dict())
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"{path}: does not fit this configuration ({first})") from None
        ckpt.restore_rng(tensors, meta.get("rng", {}))
        if self.augment_strength is not None:
            self.augment_strength.load(tensors)
        if self.graphed is not None:  # the optimisers' state tensors were replaced
            self.graphed.reset()
        self.pos = Position(meta["epoch"], meta["step"], meta["iteration"])
        if self.pos.step >= len(self.feeder):
            self.pos = Position(self.pos.epoch + 1, 0, self.pos.iteration)
        self.wall_offset = float(meta.get("wall_time", 0.0))
        self.eval_seconds = float(meta.get("eval_seconds", 0.0))
        self.best = self._best_on_disk(dict(meta.get("best") or {}))
        health = dict(meta.get("health") or {})
        self.rolled_back = bool(health.pop("rolled_back", False))
        self.health.load_state_dict(health)
        if self.images is not None and meta.get("data_key") not in (None, self.images.key):
            self.reporter.warn(
                f"the data changed since {path.name} was written ({meta.get('data_count')} -> "
                f"{len(self.images)} images); resuming on the current contents, so the run is no longer exact"
            )
        if self.dist.is_main:
            self._truncate_log(self.pos.iteration)
        self.reporter.info(
            f"resumed from {path} at epoch {self.pos.epoch + 1}, iteration {self.pos.iteration}"
        )

    def _truncate_log(self, iteration: int) -> None:
        """Drop log rows written after the checkpoint, so a resumed log reads like one run."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                if json.loads(line).get("iteration", 0) <= iteration:
                    kept.append(line)
            except ValueError:
                continue
        ckpt.write_atomic(self.log_path, ("\n".join(kept) + "\n").encode() if kept else b"")

    def _best_on_disk(self, best: dict[str, Any]) -> dict[str, Any]:
        """The better of `best` and what checkpoints/best.safetensors records.

        An evaluation can write best.safetensors after the newest regular checkpoint; a resume or a
        roll-back to that checkpoint must not later replace the better file with a worse one.
        """
        path = self.ckpt_dir / BEST_NAME
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

    def _save_best(self) -> None:
        tensors, meta = self.state()
        path = self.ckpt_dir / BEST_NAME
        try:
            ckpt.save_checkpoint(path, tensors, meta)
        except OSError as e:
            self.reporter.warn(f"{path}: could not write the best checkpoint ({e.strerror or e})")
