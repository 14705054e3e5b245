"""The training loop: a Trainer owns one run directory and trains, top to bottom, epoch by epoch.

Setting up is training/run.py (build_run), the checkpoint side training/state.py, the work between
steps (samples, evaluations, time budget, health, signals) training/periodic.py.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import torch

from animegen import checkpoint_format as ckpt
from animegen.config import Config
from animegen.data.batches import BatchFeeder
from animegen.data.cache import ImageSet
from animegen.device import resolve_device
from animegen.errors import UserError
from animegen.streams import AUGMENT, TRAIN_NOISE, derived_seed
from animegen.training import allocator, distributed
from animegen.training.evaluator import PeriodicEvaluator
from animegen.training.graphed import CaptureError, GraphedStep
from animegen.training.health import NONFINITE, HealthMonitor
from animegen.training.monitor import Monitor
from animegen.training.periodic import PeriodicWork, RolledBack
from animegen.training.progress import Reporter
from animegen.training.run import build_run, check_run_dir, current_rss_mb, fixed_noise, load_data
from animegen.training.run_lock import RunLock, remove_temp_files
from animegen.training.state import Position, TrainingState
from animegen.training.step import train_step


class Trainer(TrainingState, PeriodicWork):
    """Owns one run directory. `run()` trains until cfg.train.epochs (or max_steps) are done."""

    def __init__(self, cfg: Config, run_dir: Path, reporter: Reporter, resume_from: Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.reporter = reporter
        self.dist = distributed.from_env()
        self.device = distributed.init(self.dist, resolve_device(cfg.train.device))
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.samples_dir = self.run_dir / "samples"
        self.log_path = self.run_dir / "log.jsonl"
        self.pos = Position()
        self.wall_offset = 0.0
        self._interrupted = False  # stopping on a signal, agreed by every rank
        self._stop_signal: int | None = None  # the first stop signal this process received
        self._last_checkpoint_at = time.perf_counter()
        self.lock = RunLock(self.run_dir)
        self._t_start = time.perf_counter()
        self.parts = run = build_run(cfg, self.device, self.dist, info=reporter.info)
        # The DDP (or compiled) wrappers train; the bare modules are what checkpoints and samples see.
        self.netG, self.netD, self.G, self.D, self.D_for_g = run.netG, run.netD, run.G, run.D, run.D_for_g
        self.optG, self.optD, self.loss, self.augment, self.amp = (
            run.optG,
            run.optD,
            run.loss,
            run.augment,
            run.speed.amp,
        )
        self.augment_strength = run.augment_strength
        self.ema, self.bn_noise, self.channels_last = run.ema, run.bn_noise, run.speed.channels_last
        self.local_batch, self.reusing_memory = run.local_batch, run.speed.reuse_memory
        self._bn_calibrated_at = -1  # the EMA update count the statistics were measured at
        self.graphed = GraphedStep(self._step, self.device) if run.speed.cuda_graph else None
        z_dim = cfg.model.z_dim
        self.fixed_noise = fixed_noise(cfg.train.sample_count, z_dim, cfg.train.seed).to(self.device)
        self.resume_from = resume_from
        self.images: ImageSet | None = None
        self.monitor: Monitor | None = None
        self.evaluator: PeriodicEvaluator | None = None
        # The best evaluation so far: {"metric", "score", "iteration"}; kept in checkpoints.
        self.best: dict[str, Any] = {}
        self._last_eval = -1
        self.eval_seconds = 0.0  # held-out evaluation time, left out of train.max_minutes
        self._time_up = False
        # With label smoothing s, D(x) aims at 1 - s: "D wins" must be judged below that.
        d_x_above = min(0.95, 1.0 - cfg.optim.label_smoothing - 0.02)
        self.health = HealthMonitor(d_x_above=d_x_above)
        self.rolled_back = False  # a non-finite loss is rolled back once; the second one stops the run

    def _step(self, real: torch.Tensor, noise: torch.Tensor, **per_iteration: Any) -> torch.Tensor:
        """One update of D and G. train.cuda_graph captures it as called with (real, noise) alone:
        config validation keeps the per-iteration inputs (augmentation, R1) out of graphed runs."""
        return train_step(
            self.G,
            self.D,
            self.optG,
            self.optD,
            real,
            noise,
            self.loss,
            self.amp,
            d_for_g=self.D_for_g,
            recon=self.cfg.model.d_recon,
            **per_iteration,
        )

    def _augment_reading(self, real_sign: float) -> dict[str, float]:
        """The adaptive augmentation's state for a log row: its probability and what it watches."""
        s = self.augment_strength
        if s is None or not s.adaptive:
            return {}
        return {"augment_p": round(float(s.p), 4), "D_sign": round(real_sign, 4)}

    def prepare(self) -> None:
        made: list[Path] = []
        # Every rank has decided what to train (training/session.py) before rank 0 writes anything.
        distributed.barrier(self.dist)
        try:
            if self.dist.is_main:
                check_run_dir(self.run_dir, (self.ckpt_dir, self.samples_dir), self.parts, made)
                self.lock.acquire()
                removed = remove_temp_files(self.run_dir)
                if removed:
                    self.reporter.info(f"removed {removed} temp file(s) that a killed write left behind")
                # Written before the images are decoded: a run killed while decoding restarts from it.
                ckpt.write_atomic(self.run_dir / "config.json", (self.cfg.to_json() + "\n").encode())
                if self.resume_from is None:  # rows from an attempt that never checkpointed
                    self._truncate_log(0)
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
            self.monitor = Monitor(self.run_dir, tensorboard=self.cfg.train.tensorboard)
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
            self.local_batch,
            self.device,
            seed=self.cfg.train.seed,
            hflip=self.cfg.data.hflip,
            channels_last=self.channels_last,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            indices=train_rows if len(train_rows) < len(self.images) else None,
        )
        if self.resume_from is not None:
            self._restore(self.resume_from)
        if self.dist.is_main:
            self.reporter.info(self.describe_setup())

    def describe_setup(self) -> str:
        return self.parts.speed.describe(self.cfg.train.batch_size, self.netG, self.feeder.resident)

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> dict[str, Any]:
        self._t_start = time.perf_counter()
        self._last_checkpoint_at = self._t_start
        t = self.cfg.train
        total_epochs = t.epochs
        steps = len(self.feeder)
        total_iters = total_epochs * steps if t.max_steps is None else min(t.max_steps, total_epochs * steps)
        last_ckpt: Path | None = None
        summary: dict[str, Any] = {}
        start_iteration = self.pos.iteration
        if start_iteration:  # a resumed run may have used its time budget already
            self._agree_at_sync_point()
        with self._stop_signals():
            while (
                self.pos.epoch < total_epochs
                and self.pos.iteration < total_iters
                and not self._interrupted
                and not self._time_up
            ):
                try:
                    summary = self._run_epoch(total_epochs, total_iters)
                except RolledBack:
                    continue
                if self.pos.step >= steps:
                    sample_path = self.write_samples(self.pos.epoch + 1)
                    last_ckpt = self.save_checkpoint()
                    if self.reusing_memory:  # what the checkpoint write and samples freed
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
                if not self._interrupted:
                    self.write_samples(self.pos.epoch + 1)
                last_ckpt = self.save_checkpoint()
            if (
                t.eval_every
                and not self._interrupted
                and self.pos.iteration > start_iteration
                and self._last_eval != self.pos.iteration
            ):
                self.evaluate_now()
        if self.monitor is not None:
            self.monitor.close()
        if self._interrupted:
            self.reporter.info(
                f"interrupted: saved {last_ckpt}; continue with: animegen train --resume {self.run_dir}"
            )
            raise TrainingInterrupted(str(last_ckpt), self._stop_signal or signal.SIGINT)
        return {"checkpoint": last_ckpt, "position": self.pos, **summary}

    def _run_epoch(self, total_epochs: int, total_iters: int) -> dict[str, Any]:
        t = self.cfg.train
        steps = len(self.feeder)
        epoch = self.pos.epoch
        self.netG.train()
        self.netD.train()
        z_dim = self.cfg.model.z_dim
        noise_gen = torch.Generator(device=self.device) if self.device.type != "mps" else torch.Generator()
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
                lo = self.dist.rank * self.local_batch
                noise = noise[lo : lo + self.local_batch].to(self.device)
                if self.channels_last:
                    noise = noise.contiguous(memory_format=torch.channels_last)
                o = self.cfg.optim
                lazy_r1 = o.r1_gamma and self.pos.iteration % o.r1_every == 0
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
                        augment=self.augment,
                        aug_seed=derived_seed(t.seed, AUGMENT, self.pos.iteration),
                        aug_p=self.augment_strength.p if self.augment_strength else None,
                        r1_weight=o.r1_gamma / 2 * o.r1_every if lazy_r1 else 0.0,
                    )
                if self.ema is not None:
                    self.ema.update_parameters(self.netG)
                stats_sum += stats
                stats_n += 1
                seen += real.shape[0]
                self.pos.step += 1
                self.pos.iteration += 1
                if self.augment_strength is not None:
                    self.augment_strength.observe(
                        stats[4], self.pos.iteration, lambda x: distributed.all_mean(x, self.dist)
                    )
                if stats_n >= t.log_every or self.pos.step >= steps or self.pos.iteration >= total_iters:
                    # The only host sync, every log_every steps.
                    values = distributed.all_mean(stats_sum / stats_n, self.dist).tolist()
                    reading = dict(zip(("loss_D", "loss_G", "D_x", "D_G_z"), values[:4], strict=True))
                    for event in self.health.observe(self.pos.iteration, reading):
                        if event.kind == NONFINITE:
                            self._roll_back(event.message)  # raises
                        self._report_health(event)
                    epoch_stats += stats_sum
                    epoch_n += stats_n
                    elapsed = time.perf_counter() - t0
                    last = {
                        "loss_D": values[0],
                        "loss_G": values[1],
                        "D_x": values[2],
                        "D_G_z": values[3],
                        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
                    }
                    self._log(
                        {
                            "iteration": self.pos.iteration,
                            "epoch": epoch + 1,
                            "step": self.pos.step,
                            **{k: round(v, 6) for k, v in last.items()},
                            "wall_time": round(self.wall_offset + time.perf_counter() - self._t_start, 3),
                            "rss_mb": current_rss_mb(),
                            **self._augment_reading(values[4]),
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
                if self._stop_signal is not None and not self.dist.enabled:
                    self._interrupted = True  # one process: no other rank to agree with, stop now
                if self.pos.iteration >= total_iters or self._interrupted or self._time_up:
                    break
        if epoch_n:
            means = distributed.all_mean(epoch_stats / epoch_n, self.dist).tolist()
            last.update(loss_D=means[0], loss_G=means[1], D_x=means[2], D_G_z=means[3])
        last["seconds"] = time.perf_counter() - t0
        return last


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint (its path is the message)."""

    def __init__(self, checkpoint: str, signum: int = signal.SIGINT):
        super().__init__(checkpoint)
        self.signum = int(signum)
