"""The training loop: a Trainer owns one run directory and trains, top to bottom, epoch by epoch.

What the loop uses is built in `Trainer.__init__` and handed over as arguments: the networks,
optimisers and loss (training/run.py), the checkpoint folder and the state packed into it
(training/state.py), the clocks (training/clock.py), stop signals (training/stopping.py), the
sampling generator (training/ema.py), held-out evaluations (training/evaluator.py), health
checks (training/health.py) and log.jsonl (training/monitor.py). One iteration is `_run_epoch`'s
loop body; the work between iterations (samples, evaluations, checkpoints, the time budget, a
roll-back) follows it in this file.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animegen import checkpoint_format as ckpt
from animegen.config import Config
from animegen.data.batches import BatchFeeder
from animegen.data.cache import ImageSet
from animegen.device import resolve_device
from animegen.errors import CheckpointError, UserError
from animegen.sampling import sample_images
from animegen.streams import AUGMENT, TRAIN_NOISE, derived_seed
from animegen.training import allocator, distributed
from animegen.training.augment import AugmentStrength
from animegen.training.clock import RunClock
from animegen.training.ema import SamplingGenerator
from animegen.training.evaluator import PeriodicEvaluator
from animegen.training.graphed import CaptureError, GraphedStep
from animegen.training.health import COLLAPSE, D_WINS, NONFINITE, HealthEvent, HealthMonitor
from animegen.training.lr_schedule import lr_scale, set_lr
from animegen.training.monitor import Monitor, RunLog
from animegen.training.progress import Reporter
from animegen.training.run import build_run, check_run_dir, current_rss_mb, fixed_noise, load_data
from animegen.training.run_lock import RunLock, remove_temp_files
from animegen.training.state import Checkpoints, Position, epochs_done, pack_state, restore_state
from animegen.training.step import train_step
from animegen.training.stopping import StopSignals
from animegen.visual import make_grid, save_png

STAT_NAMES = ("loss_D", "loss_G", "D_x", "D_G_z")  # train_step's first four; the fifth feeds ADA


class RolledBack(Exception):
    """The loop restored an earlier checkpoint: start the epoch loop again from there."""


class Trainer:
    """Owns one run directory. `run()` trains until cfg.train.epochs (or max_steps) are done."""

    def __init__(self, cfg: Config, run_dir: Path, reporter: Reporter, resume_from: Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.reporter = reporter
        self.resume_from = resume_from
        self.dist = distributed.from_env()
        self.device = distributed.init(self.dist, resolve_device(cfg.train.device))
        self.lock = RunLock(self.run_dir)
        self.clock = RunClock()
        self.stop = StopSignals(reporter.info)
        self.log = RunLog(self.run_dir / "log.jsonl", write=self.dist.is_main)
        self.checkpoints = Checkpoints(
            self.run_dir / "checkpoints", cfg.train.keep_checkpoints, reporter.warn
        )
        self.samples_dir = self.run_dir / "samples"
        self.parts = run = build_run(cfg, self.device, self.dist, info=reporter.info)
        self.sampling = SamplingGenerator(run.netG, run.ema, run.bn_noise, cfg.model, self.device, self.dist)
        self.graphed = GraphedStep(self._step, self.device) if run.speed.cuda_graph else None
        self.fixed_noise = fixed_noise(cfg.train.sample_count, cfg.model.z_dim, cfg.train.seed).to(
            self.device
        )
        # With label smoothing s, D(x) aims at 1 - s: "D wins" must be judged below that.
        d_x_above = min(0.95, 1.0 - cfg.optim.label_smoothing - 0.02)
        self.health = HealthMonitor(d_x_above=d_x_above)
        # Filled in by prepare():
        self.images: ImageSet | None = None
        self.feeder: BatchFeeder | None = None
        self.monitor: Monitor | None = None
        self.evaluator: PeriodicEvaluator | None = None
        # The run's progress, all of it in checkpoints:
        self.pos = Position()
        self.best: dict[str, Any] = {}  # the best evaluation so far: {"metric", "score", "iteration"}
        self.rolled_back = False  # a non-finite loss is rolled back once; the second one stops the run
        # This launch's decisions, agreed by every rank:
        self.interrupted = False  # stopping on a signal
        self.time_up = False
        self.last_eval = -1  # the iteration last evaluated

    def _step(self, real: torch.Tensor, noise: torch.Tensor, **per_iteration: Any) -> torch.Tensor:
        """One update of D and G. train.cuda_graph captures it as called with (real, noise) alone:
        config validation keeps the per-iteration inputs (augmentation, R1) out of graphed runs."""
        run = self.parts
        return train_step(
            run.G,
            run.D,
            run.optG,
            run.optD,
            real,
            noise,
            run.loss,
            run.speed.amp,
            d_for_g=run.D_for_g,
            recon=self.cfg.model.d_recon,
            lecam=run.lecam,
            **per_iteration,
        )

    # -- before the first step ------------------------------------------------------------------

    def prepare(self) -> None:
        made: list[Path] = []
        # Every rank has decided what to train (training/session.py) before rank 0 writes anything.
        distributed.barrier(self.dist)
        try:
            if self.dist.is_main:
                check_run_dir(self.run_dir, (self.checkpoints.folder, self.samples_dir), self.parts, made)
                self.lock.acquire()
                removed = remove_temp_files(self.run_dir)
                if removed:
                    self.reporter.info(f"removed {removed} temp file(s) that a killed write left behind")
                # Written before the images are decoded: a run killed while decoding restarts from it.
                ckpt.write_atomic(self.run_dir / "config.json", (self.cfg.to_json() + "\n").encode())
                if self.resume_from is None:  # rows from an attempt that never checkpointed
                    self.log.truncate(0)
            self.images, train_rows, held_rows = load_data(self.cfg, self.dist, self.reporter)
        except BaseException:
            self.lock.release()
            # A run that never started (no such folder, no usable image, Ctrl-C while decoding)
            # leaves no run dir behind, which the next run would skip to runs/<name>-2.
            if self.run_dir in made:
                for name in ("config.json", ".lock"):
                    with contextlib.suppress(OSError):
                        (self.run_dir / name).unlink()
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        if self.dist.is_main:
            self.monitor = self.log.monitor = Monitor(self.run_dir, tensorboard=self.cfg.train.tensorboard)
        if len(held_rows):
            self.reporter.info(
                f"holding out {len(held_rows)} of {len(self.images)} images for evaluation (never trained on)"
            )
        if self.cfg.train.eval_every and self.dist.is_main:
            self.evaluator = PeriodicEvaluator(
                self.cfg, self.images, held_rows, self.device, warn=self.reporter.warn, train_rows=train_rows
            )
        self.feeder = BatchFeeder(
            self.images.images,
            self.parts.local_batch,
            self.device,
            seed=self.cfg.train.seed,
            hflip=self.cfg.data.hflip,
            channels_last=self.parts.speed.channels_last,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            indices=train_rows if len(train_rows) < len(self.images) else None,
        )
        if self.resume_from is not None:
            self._restore(self.resume_from)
        if self.dist.is_main:
            self.reporter.info(self.describe_setup())

    def describe_setup(self) -> str:
        return self.parts.speed.describe(self.cfg.train.batch_size, self.parts.netG, self.feeder.resident)

    # -- training ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> dict[str, Any]:
        self.clock.start()
        t = self.cfg.train
        total_epochs = t.epochs
        steps = len(self.feeder)
        total_iters = total_epochs * steps if t.max_steps is None else min(t.max_steps, total_epochs * steps)
        last_ckpt: Path | None = None
        summary: dict[str, Any] = {}
        start_iteration = self.pos.iteration
        if start_iteration:  # a resumed run may have used its time budget already
            self._agree_at_sync_point()
        with self.stop.installed():
            while (
                self.pos.epoch < total_epochs
                and self.pos.iteration < total_iters
                and not self.interrupted
                and not self.time_up
            ):
                try:
                    summary = self._run_epoch(total_epochs, total_iters)
                except RolledBack:
                    continue
                if self.pos.step >= steps:
                    sample_path = self.write_samples(self.pos.epoch + 1)
                    last_ckpt = self.save_checkpoint()
                    if self.parts.speed.reuse_memory:  # what the checkpoint write and samples freed
                        allocator.release_freed_memory()
                    self.reporter.epoch_done(
                        self.pos.epoch + 1, total_epochs, summary, sample_path, last_ckpt
                    )
                    self.pos = Position(self.pos.epoch + 1, 0, self.pos.iteration)
            if self.pos.iteration == start_iteration and self.resume_from is not None:
                # Resumed with nothing left to train: the checkpoint resumed from is already current.
                last_ckpt = Path(self.resume_from)
            elif self.pos.step != 0 or last_ckpt is None:
                # Stopped mid-epoch (max_steps, Ctrl-C): keep the exact position.
                if not self.interrupted:
                    self.write_samples(self.pos.epoch + 1)
                last_ckpt = self.save_checkpoint()
            if (
                t.eval_every
                and not self.interrupted
                and self.pos.iteration > start_iteration
                and self.last_eval != self.pos.iteration
            ):
                self.evaluate_now()
        if self.monitor is not None:
            self.monitor.close()
        if self.interrupted:
            self.reporter.info(
                f"interrupted: saved {last_ckpt}; continue with: animegen train --resume {self.run_dir}"
            )
            raise TrainingInterrupted(str(last_ckpt), self.stop.received or signal.SIGINT)
        return {"checkpoint": last_ckpt, "position": self.pos, **summary}

    def _run_epoch(self, total_epochs: int, total_iters: int) -> dict[str, Any]:
        t, o, run = self.cfg.train, self.cfg.optim, self.parts
        steps = len(self.feeder)
        epoch = self.pos.epoch
        run.netG.train()
        run.netD.train()
        z_dim = self.cfg.model.z_dim
        noise_gen = torch.Generator(device=self.device) if self.device.type != "mps" else torch.Generator()
        strength = run.augment_strength
        seen = 0
        t0 = time.perf_counter()
        stats_sum = torch.zeros(5, device=self.device)
        stats_n = 0
        epoch_stats = torch.zeros(5, device=self.device)
        epoch_n = 0
        last: dict[str, float] = {}
        bar = self.reporter.epoch_bar(epoch + 1, total_epochs, steps, start=self.pos.step)
        with bar:
            for real in self.feeder.epoch(epoch, start=self.pos.step):
                # Noise is a pure function of (seed, iteration): exact on resume, no state to carry.
                # Each rank takes its slice of the global batch's noise, so N processes see the
                # same noise as one process with the whole batch.
                noise_gen.manual_seed(derived_seed(t.seed, TRAIN_NOISE, self.pos.iteration))
                noise = torch.randn(t.batch_size, z_dim, 1, 1, device=noise_gen.device, generator=noise_gen)
                lo = self.dist.rank * run.local_batch
                noise = noise[lo : lo + run.local_batch].to(self.device)
                if run.speed.channels_last:
                    noise = noise.contiguous(memory_format=torch.channels_last)
                lazy_r1 = o.r1_gamma and self.pos.iteration % o.r1_every == 0
                if o.lr_half_life:
                    scale = lr_scale(self.pos.iteration * t.batch_size, o.lr_half_life)
                    set_lr(run.optG, o.lr_g * scale)
                    set_lr(run.optD, o.lr_d * scale)
                stats = None
                if self.graphed is not None:
                    try:
                        stats = self.graphed(real, noise)
                    except CaptureError as e:
                        if t.cuda_graph == "on":
                            raise UserError(f"{e}; train without --cuda-graph") from None
                        # "auto" picked the graph: where this card or driver cannot capture, the
                        # run trains on eagerly (capture runs no kernel, so nothing has moved).
                        self.reporter.warn(f"{e}; training on without it (--no-cuda-graph skips the attempt)")
                        self.graphed = None
                if stats is None:
                    stats = self._step(
                        real,
                        noise,
                        augment=run.augment,
                        aug_seed=derived_seed(t.seed, AUGMENT, self.pos.iteration),
                        aug_p=strength.p if strength else None,
                        r1_weight=o.r1_gamma / 2 * o.r1_every if lazy_r1 else 0.0,
                    )
                if run.ema is not None:
                    run.ema.update_parameters(run.netG)
                stats_sum += stats
                stats_n += 1
                seen += real.shape[0]
                self.pos.step += 1
                self.pos.iteration += 1
                if strength is not None:
                    strength.observe(
                        stats[4], self.pos.iteration, lambda x: distributed.all_mean(x, self.dist)
                    )
                if stats_n >= t.log_every or self.pos.step >= steps or self.pos.iteration >= total_iters:
                    # The only host sync, every log_every steps.
                    values = distributed.all_mean(stats_sum / stats_n, self.dist).tolist()
                    reading = dict(zip(STAT_NAMES, values[:4], strict=True))
                    for event in self.health.observe(self.pos.iteration, reading):
                        if event.kind == NONFINITE:
                            self._roll_back(event.message)  # raises
                        self._report_health(event)
                    epoch_stats += stats_sum
                    epoch_n += stats_n
                    elapsed = time.perf_counter() - t0
                    last = {**reading, "images_per_s": seen / elapsed if elapsed > 0 else 0.0}
                    self.log.write(
                        {
                            "iteration": self.pos.iteration,
                            "epoch": epoch + 1,
                            "step": self.pos.step,
                            **{k: round(v, 6) for k, v in last.items()},
                            "wall_time": round(self.clock.wall(), 3),
                            "rss_mb": current_rss_mb(),
                            **augment_reading(strength, values[4]),
                            **({"lr_g": run.optG.param_groups[0]["lr"]} if o.lr_half_life else {}),
                        }
                    )
                    stats_sum.zero_()
                    stats_n = 0
                    checkpoint_due = self._agree_at_sync_point()
                    if checkpoint_due and self.pos.step < steps:  # an epoch's end checkpoints anyway
                        self.save_checkpoint()
                bar.advance(last)
                if t.eval_every and self.pos.iteration % t.eval_every == 0:
                    self.evaluate_now()
                if (
                    t.checkpoint_every
                    and self.pos.iteration % t.checkpoint_every == 0
                    and self.pos.step < steps
                ):
                    self.save_checkpoint()
                if self.stop.received is not None and not self.dist.enabled:
                    self.interrupted = True  # one process: no other rank to agree with, stop now
                if self.pos.iteration >= total_iters or self.interrupted or self.time_up:
                    break
        if epoch_n:
            means = distributed.all_mean(epoch_stats / epoch_n, self.dist).tolist()
            last.update(zip(STAT_NAMES, means[:4], strict=True))
        last["seconds"] = time.perf_counter() - t0
        return last

    # -- between steps ----------------------------------------------------------------------------

    def _agree_at_sync_point(self) -> bool:
        """At a log row: stop for the time budget or a signal, and whether a checkpoint is due by
        train.checkpoint_minutes; every rank decides alike, on the ranks' mean clocks and any rank's
        signal, so all stop at the same iteration."""
        readings = torch.tensor(
            [
                self.clock.train_seconds(),
                float(self.stop.received is not None),
                self.clock.since_checkpoint(),
            ],
            dtype=torch.float64,
        )
        if self.dist.enabled:
            readings = distributed.all_mean(readings.to(self.device), self.dist).cpu()
        clock, stop, since_checkpoint = readings.tolist()
        limit = self.cfg.train.max_minutes
        if limit is not None and not self.time_up and clock >= limit * 60:
            self.time_up = True
            self.reporter.info(f"time budget of {limit:g} min reached at iteration {self.pos.iteration}")
        if stop > 0 and not self.interrupted:
            self.interrupted = True
            if self.stop.received is None:
                self.reporter.info("another process was signalled: checkpointing, then stopping")
        every = self.cfg.train.checkpoint_minutes
        return bool(every) and since_checkpoint >= every * 60

    def write_samples(self, epoch_number: int) -> Path:
        path = self.samples_dir / f"epoch_{epoch_number:03d}.png"
        if not self.dist.is_main:
            return path
        images = sample_images(self.sampling.net(), self.fixed_noise, bn_mode="batch")
        if self.images is not None and len(images) >= 2:
            real = torch.from_numpy(np.ascontiguousarray(self.images.images[: len(images)]))
            for event in self.health.observe_samples(self.pos.iteration, images, real):
                self._report_health(event)
        grid = make_grid(images, nrow=int(math.sqrt(len(images))) or 1)
        save_png(grid, path)
        if self.monitor is not None:
            self.monitor.epoch(epoch_number, self.pos.iteration, grid)
        return path

    def evaluate_now(self) -> None:
        """Evaluate on the held-out images, log it, and keep checkpoints/best.safetensors."""
        started = time.perf_counter()
        if self.evaluator is not None:
            it = self.pos.iteration
            # D's scores on real faces need every rank's BatchNorm when it is synchronised.
            d = None if self.dist.enabled and self.cfg.train.sync_bn else distributed.unwrap(self.parts.netD)
            result = self.evaluator(self.sampling.net(), it, d)
            if result is not None:
                self.log.write(
                    {
                        "iteration": it,
                        "epoch": self.pos.epoch + (1 if self.pos.step else 0),
                        "kind": "eval",
                        **result.metrics,
                        "wall_time": round(self.clock.wall(), 3),
                        "train_seconds": round(
                            self.clock.train_seconds() - (time.perf_counter() - started), 3
                        ),
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
                    self.checkpoints.save_best(*self._state())
                self.reporter.info(
                    f"eval at iteration {it} (n={result.metrics.get('n_fake')}): {shown}"
                    + ("  (best so far)" if better else "")
                )
        self.last_eval = self.pos.iteration
        if self.parts.speed.reuse_memory:  # the evaluation's feature buffers are not needed by the steps
            allocator.release_freed_memory()
        distributed.barrier(self.dist)
        # Every rank waited for the evaluation, so every rank's clock leaves it out.
        self.clock.eval_seconds += time.perf_counter() - started

    def _report_health(self, event: HealthEvent) -> None:
        self.reporter.warn(event.message)
        if event.kind in (D_WINS, COLLAPSE):
            self.log.write(
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
            path = self.checkpoints.latest_good()
        except CheckpointError:
            raise UserError(f"{message}, before the first checkpoint: {advice}") from None
        distributed.barrier(self.dist)
        # The rolled-back stretch was still spent: the clocks go on from now, not from the checkpoint.
        clocks = self.clock.wall_offset, self.clock.eval_seconds
        self._restore(path)
        self.clock.wall_offset, self.clock.eval_seconds = clocks
        optG, optD = self.parts.optG, self.parts.optD
        for opt in (optG, optD):
            for group in opt.param_groups:
                group["lr"] *= 0.5
        self.rolled_back = True
        lrs = f"lr_g {optG.param_groups[0]['lr']:.3g}, lr_d {optD.param_groups[0]['lr']:.3g}"
        self.reporter.warn(f"{message}; rolled back to {path.name} and halved the learning rates ({lrs})")
        self.log.write(
            {
                "iteration": self.pos.iteration,
                "kind": "health",
                "event": "rollback",
                "message": message,
                "checkpoint": path.name,
            }
        )
        raise RolledBack

    # -- checkpoints --------------------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return pack_state(
            self.parts,
            self.sampling.net(),
            self.parts.augment_strength,
            self.pos,
            len(self.feeder),
            self.images,
            self.clock,
            self.best,
            {**self.health.state_dict(), "rolled_back": self.rolled_back},
        )

    def save_checkpoint(self) -> Path:
        path = self.checkpoints.path(epochs_done(self.pos, len(self.feeder)), self.pos.iteration)
        # Only rank 0 writes; packing elsewhere would also rebuild and calibrate an EMA copy for nothing.
        if self.dist.is_main:
            self.checkpoints.save(path, *self._state())
        self.clock.checkpointed()
        return path

    def _restore(self, path: Path) -> None:
        restored = restore_state(path, self.parts, self.parts.augment_strength)
        if self.graphed is not None:  # the optimisers' state tensors were replaced
            self.graphed.reset()
        self.pos = restored.pos
        if self.pos.step >= len(self.feeder):
            self.pos = Position(self.pos.epoch + 1, 0, self.pos.iteration)
        self.clock.wall_offset, self.clock.eval_seconds = restored.wall_time, restored.eval_seconds
        self.best = self.checkpoints.best_on_disk(restored.best)
        self.rolled_back = restored.rolled_back
        self.health.load_state_dict(restored.health)
        if self.images is not None and restored.data_key not in (None, self.images.key):
            self.reporter.warn(
                f"the data changed since {path.name} was written ({restored.data_count} -> "
                f"{len(self.images)} images); resuming on the current contents, so the run is no longer exact"
            )
        if self.dist.is_main:
            self.log.truncate(self.pos.iteration)
        self.reporter.info(
            f"resumed from {path} at epoch {self.pos.epoch + 1}, iteration {self.pos.iteration}"
        )


def augment_reading(strength: AugmentStrength | None, real_sign: float) -> dict[str, float]:
    """The adaptive augmentation's state for a log row: its probability and what it watches."""
    if strength is None or not strength.adaptive:
        return {}
    return {"augment_p": round(float(strength.p), 4), "D_sign": round(real_sign, 4)}


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint (its path is the message)."""

    def __init__(self, checkpoint: str, signum: int = signal.SIGINT):
        super().__init__(checkpoint)
        self.signum = int(signum)
