"""What the training loop does between steps: sample grids, held-out evaluations, the time budget,
health reports and the one roll-back, log rows, and stopping on a signal."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animegen import checkpoint_format as ckpt
from animegen.errors import CheckpointError, UserError
from animegen.networks import build_generator
from animegen.sampling import sample_images
from animegen.training import allocator, distributed
from animegen.training.ema import calibrate_bn
from animegen.training.health import COLLAPSE, D_WINS, HealthEvent
from animegen.visual import make_grid, save_png


class RolledBack(Exception):
    """The loop restored an earlier checkpoint: start the epoch loop again from there."""


class PeriodicWork:
    """The trainer's work between steps (a mixin of training/loop.py's Trainer, whose attributes it reads)."""

    def write_samples(self, epoch_number: int) -> Path:
        path = self.samples_dir / f"epoch_{epoch_number:03d}.png"
        if not self.dist.is_main:
            return path
        images = sample_images(self._sampling_net(), self.fixed_noise, bn_mode="batch")
        if self.images is not None and len(images) >= 2:
            real = torch.from_numpy(np.ascontiguousarray(self.images.images[: len(images)]))
            for event in self.health.observe_samples(self.pos.iteration, images, real):
                self._report_health(event)
        grid = make_grid(images, nrow=int(math.sqrt(len(images))) or 1)
        save_png(grid, path)
        if self.monitor is not None:
            self.monitor.epoch(epoch_number, self.pos.iteration, grid)
        return path

    def _sampling_net(self) -> torch.nn.Module:
        """The generator that samples and evaluation see: the EMA copy when there is one."""
        net: torch.nn.Module = self.ema.module if self.ema is not None else self.netG
        if self.dist.enabled:
            # Synchronised BatchNorm would wait for the other ranks: sample from a plain copy.
            plain = build_generator(self.cfg.model).to(self.device)
            plain.load_state_dict(distributed.unwrap(net).state_dict())
            net = plain
        if self.ema is not None and (self.dist.enabled or self._bn_calibrated_at != int(self.ema.n_averaged)):
            calibrate_bn(net, self.bn_noise)
            if not self.dist.enabled:
                self._bn_calibrated_at = int(self.ema.n_averaged)
        return net

    def evaluate_now(self) -> None:
        """Evaluate on the held-out images, log it, and keep checkpoints/best.safetensors."""
        started = time.perf_counter()
        if self.evaluator is not None:
            it = self.pos.iteration
            # D's scores on real faces need every rank's BatchNorm when it is synchronised.
            d = None if self.dist.enabled and self.cfg.train.sync_bn else distributed.unwrap(self.netD)
            result = self.evaluator(self._sampling_net(), it, d)
            if result is not None:
                wall = round(self.wall_offset + time.perf_counter() - self._t_start, 3)
                self._log(
                    {
                        "iteration": it,
                        "epoch": self.pos.epoch + (1 if self.pos.step else 0),
                        "kind": "eval",
                        **result.metrics,
                        "wall_time": wall,
                        "train_seconds": round(self.train_seconds() - (time.perf_counter() - started), 3),
                    }
                )
                shown = ", ".join(
                    f"{k} {v:.4g}" for k, v in result.metrics.items() if k in ("fid", "kid", "swd", "fd_ssl")
                )
                better = math.isfinite(result.score) and (
                    self.best.get("metric") != result.score_name or result.score < self.best["score"]
                )
                if better:
                    self.best = {"metric": result.score_name, "score": result.score, "iteration": it}
                    self._save_best()
                self.reporter.info(
                    f"eval at iteration {it} (n={result.metrics.get('n_fake')}): {shown}"
                    + ("  (best so far)" if better else "")
                )
        self._last_eval = self.pos.iteration
        if self.reusing_memory:  # the evaluation's feature buffers are not needed by the steps
            allocator.release_freed_memory()
        distributed.barrier(self.dist)
        # Every rank waited for the evaluation, so every rank's clock leaves it out.
        self.eval_seconds += time.perf_counter() - started

    def train_seconds(self) -> float:
        """Wall time of this run so far, over all resumes, less held-out evaluation time."""
        return self.wall_offset + (time.perf_counter() - self._t_start) - self.eval_seconds

    def _agree_at_sync_point(self) -> bool:
        """At a log row: stop for the time budget or a signal, and whether a checkpoint is due by
        train.checkpoint_minutes; every rank decides alike, on the ranks' mean clocks and any rank's
        signal, so all stop at the same iteration."""
        now = time.perf_counter()
        readings = torch.tensor(
            [self.train_seconds(), float(self._stop_signal is not None), now - self._last_checkpoint_at],
            dtype=torch.float64,
        )
        if self.dist.enabled:
            readings = distributed.all_mean(readings.to(self.device), self.dist).cpu()
        clock, stop, since_checkpoint = readings.tolist()
        limit = self.cfg.train.max_minutes
        if limit is not None and not self._time_up and clock >= limit * 60:
            self._time_up = True
            self.reporter.info(f"time budget of {limit:g} min reached at iteration {self.pos.iteration}")
        if stop > 0 and not self._interrupted:
            self._interrupted = True
            if self._stop_signal is None:
                self.reporter.info("another process was signalled: checkpointing, then stopping")
        every = self.cfg.train.checkpoint_minutes
        return bool(every) and since_checkpoint >= every * 60

    def _report_health(self, event: HealthEvent) -> None:
        self.reporter.warn(event.message)
        if event.kind in (D_WINS, COLLAPSE):
            self._log(
                {
                    "iteration": self.pos.iteration,
                    "kind": "health",
                    "event": event.kind,
                    "message": event.message,
                }
            )

    def _roll_back(self, message: str) -> None:
        """A non-finite loss: go back to the newest good checkpoint with halved learning rates, once."""
        advice = "lower the learning rates (--set optim.lr_d=... optim.lr_g=...) or try --preset modern"
        if self.rolled_back:
            raise UserError(
                f"{message}; it happened again after halving the learning rates, stopping: {advice}"
            )
        try:
            path, _notes = ckpt.latest_good_checkpoint(self.ckpt_dir)
        except CheckpointError:
            raise UserError(f"{message}, before the first checkpoint: {advice}") from None
        distributed.barrier(self.dist)
        # The rolled-back stretch was still spent: the clocks go on from now, not from the checkpoint.
        clocks = self.wall_offset, self.eval_seconds
        self._restore(path)
        self.wall_offset, self.eval_seconds = clocks
        for opt in (self.optG, self.optD):
            for group in opt.param_groups:
                group["lr"] *= 0.5
        self.rolled_back = True
        lrs = f"lr_g {self.optG.param_groups[0]['lr']:.3g}, lr_d {self.optD.param_groups[0]['lr']:.3g}"
        self.reporter.warn(f"{message}; rolled back to {path.name} and halved the learning rates ({lrs})")
        self._log(
            {
                "iteration": self.pos.iteration,
                "kind": "health",
                "event": "rollback",
                "message": message,
                "checkpoint": path.name,
            }
        )
        raise RolledBack

    def _log(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.monitor is not None:
            self.monitor.log(row)

    @contextlib.contextmanager
    def _stop_signals(self):
        """SIGINT (Ctrl-C), SIGTERM (kill, Kubernetes, torchrun) or SIGUSR1 (Slurm's warning before
        preemption): finish the step, checkpoint, stop. A second Ctrl-C stops at once, unsaved."""

        def first(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            if self._stop_signal is None:
                self._stop_signal = signum
                self.reporter.info(
                    f"{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                    "(Ctrl-C again to stop at once, without one)"
                )

        previous = {}
        try:
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, first)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# SIGUSR1 does not exist on Windows.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)
