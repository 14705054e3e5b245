"""The training run: data, models, optimisers, the epoch loop, samples, logs and checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animegen import checkpoint_format as ckpt
from animegen.choices import parse_policy
from animegen.config import Config
from animegen.data.batches import BatchFeeder
from animegen.data.cache import ImageSet, load_demo, load_folder
from animegen.data.split import holdout_split
from animegen.deconv_grad import MatmulGradConvTranspose2d
from animegen.device import resolve_device
from animegen.errors import CheckpointError, UserError
from animegen.models import Generator, build_models
from animegen.sampling import sample_images
from animegen.streams import AUGMENT, BN_CALIBRATION, SAMPLE_GRID, TRAIN_NOISE, derived_seed
from animegen.training import allocator, distributed
from animegen.training.device import (
    apply_process_settings,
    compile_module,
    make_optimizers,
    place_models,
    use_cuda_graph,
)
from animegen.training.ema import GeneratorEMA, calibrate_bn
from animegen.training.evaluator import PeriodicEvaluator
from animegen.training.graphed import CaptureError, GraphedStep
from animegen.training.health import COLLAPSE, D_WINS, NONFINITE, HealthEvent, HealthMonitor
from animegen.training.monitor import Monitor
from animegen.training.progress import Reporter
from animegen.training.step import make_loss, resolve_amp, train_step
from animegen.visual import make_grid, save_png


def current_rss_mb() -> float | None:
    """This process's resident memory now (Linux), logged so growth across epochs shows in log.jsonl."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# 8 batches of 64. On the 96 px modern-preset EMA generator two sets of 512 latents gave held-out
# SWD 66.9 and 67.4 (n = 2,340): the statistics are settled at this count.
BN_CALIBRATION_COUNT = 512


def fixed_noise(count: int, z_dim: int, seed: int, stream: int = SAMPLE_GRID) -> torch.Tensor:
    """The noise behind every epoch's sample grid (or another fixed set of latents): drawn on the CPU
    so it is the same on any device."""
    g = torch.Generator().manual_seed(derived_seed(seed, stream))
    return torch.randn(count, z_dim, 1, 1, generator=g)


def load_images(cfg: Config, progress=None) -> ImageSet:
    d = cfg.data
    if d.path is None:
        return load_demo(d.demo_count, cfg.model.image_size, seed=0, cache_root=d.cache_dir)
    return load_folder(
        d.path,
        cfg.model.image_size,
        cache_root=d.cache_dir,
        limit=d.limit,
        workers=d.workers,
        progress=progress,
    )


@dataclass
class Position:
    """Where the run stands: the next batch to train is `step` of `epoch` (both 0-based)."""

    epoch: int = 0
    step: int = 0
    iteration: int = 0


class Trainer:
    """Owns one run directory. `run()` trains until cfg.train.epochs (or max_steps) are done."""

    def __init__(self, cfg: Config, run_dir: Path, reporter: Reporter, resume_from: Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.reporter = reporter
        self.dist = distributed.from_env()
        self.device = distributed.init(self.dist, resolve_device(cfg.train.device))
        if cfg.train.batch_size % self.dist.world_size:
            raise UserError(
                f"--batch-size {cfg.train.batch_size} must divide evenly over {self.dist.world_size} ranks"
            )
        self.local_batch = cfg.train.batch_size // self.dist.world_size
        self.reusing_memory, self.cudnn_benchmark = apply_process_settings(cfg.train, self.device)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.samples_dir = self.run_dir / "samples"
        self.log_path = self.run_dir / "log.jsonl"
        self.pos = Position()
        self.wall_offset = 0.0
        self._interrupted = False
        self._t_start = time.perf_counter()

        seed_everything(cfg.train.seed)
        self.netG, self.netD = build_models(cfg.model)
        self.channels_last = place_models(self.netG, self.netD, cfg.train, self.device)
        if cfg.train.sync_bn and self.dist.enabled:
            distributed.convert_sync_batchnorm(self.netG, self.device)
            distributed.convert_sync_batchnorm(self.netD, self.device)
        # The DDP wrappers train; the bare modules are what checkpoints and samples see.
        self.G = distributed.wrap(self.netG, self.dist, self.device)
        self.D = distributed.wrap(self.netD, self.dist, self.device)
        self.D_for_g: torch.nn.Module = self.netD
        if cfg.train.compile != "off":
            mode = cfg.train.compile
            self.G = compile_module(self.G, mode, self.device)
            self.D = compile_module(self.D, mode, self.device)
            self.D_for_g = compile_module(self.netD, mode, self.device) if self.dist.enabled else self.D
        self.amp = resolve_amp(cfg.train.amp, self.device)
        o = cfg.optim
        if cfg.train.cudnn_benchmark == "on" and not self.cudnn_benchmark:
            reporter.info(f"train.cudnn_benchmark: no cuDNN on {self.device.type}; ignored")
        if cfg.train.cuda_graph == "on":
            if self.dist.enabled:
                raise UserError("train.cuda_graph works in one process; drop it or --nproc")
            if self.device.type != "cuda":
                reporter.info(f"train.cuda_graph: no CUDA graphs on {self.device.type}; runs eagerly")
        graphed = use_cuda_graph(cfg.train, o, self.device, self.dist.world_size)
        self.optG, self.optD = make_optimizers(self.netG, self.netD, o, cfg.train, self.device, graphed)
        self.loss = make_loss(o.loss, o.label_smoothing)
        self.augment = parse_policy(o.augment)
        self.ema = GeneratorEMA(self.netG, o.ema) if o.ema else None
        # The EMA generator's BatchNorm statistics are measured on these (training/ema.py).
        if self.ema is not None:
            z = fixed_noise(BN_CALIBRATION_COUNT, cfg.model.z_dim, cfg.train.seed, stream=BN_CALIBRATION)
            self.bn_noise = z.to(self.device)
        self._bn_calibrated_at = -1  # the EMA update count the statistics were measured at
        self.graphed = GraphedStep(self._plain_step, self.device) if graphed else None
        self.fixed_noise = fixed_noise(cfg.train.sample_count, cfg.model.z_dim, cfg.train.seed).to(
            self.device
        )
        self.resume_from = resume_from
        self.images: ImageSet | None = None
        self.monitor: Monitor | None = None
        self.evaluator = None
        # The best evaluation so far: {"metric", "score", "iteration"}; kept in checkpoints.
        self.best: dict[str, Any] = {}
        self._last_eval = -1
        self.eval_seconds = 0.0  # held-out evaluation time, left out of train.max_minutes
        self._time_up = False
        # With label smoothing s, D(x) aims at 1 - s: "D wins" must be judged below that.
        d_x_above = min(0.95, 1.0 - cfg.optim.label_smoothing - 0.02)
        self.health = HealthMonitor(d_x_above=d_x_above)
        self.rolled_back = False  # a non-finite loss is rolled back once; the second one stops the run

    def _plain_step(self, real: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The step train.cuda_graph captures: no augmentation or R1 (config validation ensures)."""
        return train_step(
            self.G, self.D, self.optG, self.optD, real, noise, self.loss, self.amp, d_for_g=self.D_for_g
        )

    # ---- setup ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        made: list[Path] = []
        try:
            if self.dist.is_main:
                self._check_run_dir(made)
            train_rows, held_rows = self._load_data()
        except BaseException:
            # A run that never started (no such folder, no usable image, Ctrl-C while decoding)
            # leaves no empty run dir behind, which the next run would skip to runs/<name>-2.
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
                self.cfg, self.images, held_rows, self.device, warn=self.reporter.warn
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
            indices=train_rows if len(held_rows) else None,
        )
        if self.resume_from is not None:
            self._restore(self.resume_from)
        if self.dist.is_main:
            (self.run_dir / "config.json").write_text(self.cfg.to_json() + "\n")
            self.reporter.info(self.describe_setup())

    def _load_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Decode (or read the cache of) the folder; the rows to train on and the rows held out."""
        if self.dist.is_main:
            self.images = load_images(self.cfg, progress=self.reporter.decode_progress)
        # The other ranks wait for rank 0 to fill the cache, then read it.
        distributed.barrier(self.dist)
        if not self.dist.is_main:
            self.images = load_images(self.cfg)
        self.reporter.data_summary(self.images)
        train_rows, held_rows = holdout_split(len(self.images), self.cfg.data.holdout)
        if len(train_rows) < self.cfg.train.batch_size:
            held = f" after holding out {len(held_rows)}" if len(held_rows) else ""
            raise UserError(
                f"{self.images.source}: {len(train_rows)} usable images{held}, fewer than one batch of "
                f"{self.cfg.train.batch_size} (lower --batch-size)"
            )
        return train_rows, held_rows

    def describe_setup(self) -> str:
        """One line naming the device and every speed setting in force, so a user sees what runs."""
        t = self.cfg.train
        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        elif self.device.type == "cpu":
            n = torch.get_num_threads()
            device += f", {n} thread{'s' if n > 1 else ''}"
        if self.dist.enabled:
            device += f", {self.dist.world_size} processes"
        parts = [f"batch {t.batch_size}" + (f" ({self.local_batch} a process)" if self.dist.enabled else "")]
        if self.amp == "bf16":
            parts.append("bf16 autocast")
        elif self.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
            parts.append("fp32 (TF32 convolutions)")  # PyTorch's default for cuDNN
        else:
            parts.append("fp32")
        if self.channels_last:
            parts.append("channels_last")
        bf16 = self.amp == "bf16"
        if any(
            isinstance(m, MatmulGradConvTranspose2d) and m.uses_products(bf16) for m in self.netG.modules()
        ):
            parts.append("matmul deconv gradients")
        parts.append("fused Adam" if self.optG.param_groups[0].get("fused") else "unfused Adam")
        if t.compile != "off":
            parts.append(f"torch.compile {t.compile}")
        if self.graphed is not None and self.device.type == "cuda":
            parts.append("CUDA graph")
        if self.cudnn_benchmark:
            parts.append("cuDNN autotuner")
        if self.feeder.resident:
            parts.append("images on the GPU")
        if self.reusing_memory:
            parts.append("freed memory kept")
        return f"device: {device}; " + ", ".join(parts)

    def _check_run_dir(self, made: list[Path]) -> None:
        """Fail before any training if the run dir can't take a checkpoint. Appends the dirs it makes."""
        try:
            for d in (*reversed(self.run_dir.parents), self.run_dir, self.ckpt_dir, self.samples_dir):
                if not d.exists():
                    d.mkdir()
                    made.append(d)
            probe = self.run_dir / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise UserError(f"{self.run_dir}: run directory is not writable ({e.strerror or e})") from None
        need = self._checkpoint_bytes() * 2
        free = shutil.disk_usage(self.run_dir).free
        if free < need:
            raise UserError(
                f"{self.run_dir}: only {free / 2**20:.0f} MiB free, "
                f"a checkpoint needs about {need / 2**20:.0f} MiB"
            )

    def _checkpoint_bytes(self) -> int:
        params = sum(p.numel() for p in self.netG.parameters()) + sum(
            p.numel() for p in self.netD.parameters()
        )
        return params * 4 * 3 + (1 << 20)  # weights + two Adam moments, fp32

    # ---- checkpoints ----------------------------------------------------------------------------

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
            return path
        tensors, meta = self.state()
        try:
            ckpt.save_checkpoint(path, tensors, meta)
        except OSError as e:
            kept = ckpt.list_checkpoints(self.ckpt_dir)
            previous = f"; the previous checkpoint {kept[-1].name} is intact" if kept else ""
            raise UserError(f"{path}: checkpoint write failed ({e.strerror or e}){previous}") from None
        ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints)
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

    # ---- samples and logs -----------------------------------------------------------------------

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
            plain = Generator(self.cfg.model).to(self.device)
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
            result = self.evaluator(self._sampling_net(), it)
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
                    f"{k} {v:.4g}" for k, v in result.metrics.items() if k in ("fid", "kid", "swd")
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

    def _check_time_budget(self) -> None:
        limit = self.cfg.train.max_minutes
        if limit is None or self._time_up:
            return
        # Every rank must stop at the same iteration: decide on the ranks' mean clock.
        clock = torch.tensor([self.train_seconds()], dtype=torch.float64)
        if self.dist.enabled:
            clock = distributed.all_mean(clock.to(self.device), self.dist).cpu()
        if clock.item() >= limit * 60:
            self._time_up = True
            self.reporter.info(f"time budget of {limit:g} min reached at iteration {self.pos.iteration}")

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
        raise _RolledBack

    def _log(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.monitor is not None:
            self.monitor.log(row)

    # ---- the loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self._t_start = time.perf_counter()
        t = self.cfg.train
        total_epochs = t.epochs
        steps = len(self.feeder)
        total_iters = total_epochs * steps if t.max_steps is None else min(t.max_steps, total_epochs * steps)
        last_ckpt: Path | None = None
        summary: dict[str, Any] = {}
        start_iteration = self.pos.iteration
        if start_iteration:  # a resumed run may have used its time budget already
            self._check_time_budget()
        with self._stop_signals():
            while (
                self.pos.epoch < total_epochs
                and self.pos.iteration < total_iters
                and not self._interrupted
                and not self._time_up
            ):
                try:
                    summary = self._run_epoch(total_epochs, total_iters)
                except _RolledBack:
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
            raise TrainingInterrupted(str(last_ckpt))
        return {"checkpoint": last_ckpt, "position": self.pos, **summary}

    @contextlib.contextmanager
    def _stop_signals(self):
        """Ctrl-C or SIGTERM: finish the step, checkpoint, stop. A second Ctrl-C stops at once."""

        def first(signum, frame):
            if self._interrupted and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._interrupted = True
            self.reporter.info(
                "stopping after this step (Ctrl-C again to stop at once, without a checkpoint)"
            )

        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, first)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

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
        stats_sum = torch.zeros(4, device=self.device)
        stats_n = 0
        epoch_stats = torch.zeros(4, device=self.device)
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
                    stats = train_step(
                        self.G,
                        self.D,
                        self.optG,
                        self.optD,
                        real,
                        noise,
                        self.loss,
                        self.amp,
                        d_for_g=self.D_for_g,
                        augment=self.augment,
                        aug_seed=derived_seed(t.seed, AUGMENT, self.pos.iteration),
                        r1_weight=o.r1_gamma / 2 * o.r1_every if lazy_r1 else 0.0,
                    )
                if self.ema is not None:
                    self.ema.update_parameters(self.netG)
                stats_sum += stats
                stats_n += 1
                seen += real.shape[0]
                self.pos.step += 1
                self.pos.iteration += 1
                if stats_n >= t.log_every or self.pos.step >= steps or self.pos.iteration >= total_iters:
                    # The only host sync, every log_every steps.
                    values = distributed.all_mean(stats_sum / stats_n, self.dist).tolist()
                    reading = dict(zip(("loss_D", "loss_G", "D_x", "D_G_z"), values, strict=True))
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
                        }
                    )
                    stats_sum.zero_()
                    stats_n = 0
                    self._check_time_budget()
                bar.advance(last)
                if t.eval_every and self.pos.iteration % t.eval_every == 0:
                    self.evaluate_now()
                if (
                    t.checkpoint_every
                    and self.pos.iteration % t.checkpoint_every == 0
                    and self.pos.step < steps
                ):
                    self.save_checkpoint()
                if self.pos.iteration >= total_iters or self._interrupted or self._time_up:
                    break
        if epoch_n:
            means = distributed.all_mean(epoch_stats / epoch_n, self.dist).tolist()
            last.update(loss_D=means[0], loss_G=means[1], D_x=means[2], D_G_z=means[3])
        last["seconds"] = time.perf_counter() - t0
        return last


BEST_NAME = "best.safetensors"


class _RolledBack(Exception):
    """The loop restored an earlier checkpoint: start the epoch loop again from there."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint (its path is the message)."""
