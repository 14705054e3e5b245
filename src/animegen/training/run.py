"""Setting a run up: its networks, optimisers, loss and speed settings, built once by `build_run`
for the trainer and for the benchmarks, so a benchmark times the step that training runs; and the
checks and data loading that come before the first step."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from animegen.config import Config, parse_policy
from animegen.data import duplicates
from animegen.data.cache import ImageSet, load_demo, load_folder
from animegen.data.split import holdout_split
from animegen.errors import UserError
from animegen.networks import build_models
from animegen.streams import BN_CALIBRATION, SAMPLE_GRID, derived_seed
from animegen.training import distributed
from animegen.training.augment import AugmentStrength
from animegen.training.ema import GeneratorEMA
from animegen.training.lecam import LeCam
from animegen.training.speed_plan import SpeedPlan, compile_module
from animegen.training.step import make_loss


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


# 8 batches of 64: enough latents that the recomputed statistics are settled (docs/design-notes.md).
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
class Run:
    """What one training run trains with. `G`, `D` are what the step calls (DDP or torch.compile
    wrappers when asked for), `netG`, `netD` the bare modules that checkpoints and samples see."""

    cfg: Config
    device: torch.device
    dist: distributed.DistInfo
    local_batch: int  # the batch of one process
    speed: SpeedPlan  # every speed setting, as applied
    netG: torch.nn.Module
    netD: torch.nn.Module
    G: torch.nn.Module
    D: torch.nn.Module
    D_for_g: torch.nn.Module
    optG: torch.optim.Adam
    optD: torch.optim.Adam
    loss: Callable
    augment: tuple[str, ...]
    augment_strength: AugmentStrength | None  # None: every op on every image (or no policy)
    lecam: LeCam | None  # D's LeCam penalty and its anchors (optim.lecam > 0)
    ema: GeneratorEMA | None
    bn_noise: torch.Tensor | None  # the latents the EMA generator's BatchNorm statistics come from


def build_run(
    cfg: Config,
    device: torch.device,
    dist: distributed.DistInfo | None = None,
    info: Callable[[str], None] = lambda _m: None,
) -> Run:
    """The run's process settings applied, then its networks (seeded by train.seed), wrappers,
    optimisers and loss; `info` hears about switches asked for that do not apply here."""
    dist = dist or distributed.DistInfo()
    t, o = cfg.train, cfg.optim
    if t.batch_size % dist.world_size:
        raise UserError(f"--batch-size {t.batch_size} must divide evenly over {dist.world_size} ranks")
    speed = SpeedPlan.resolve(t, o, device, dist.world_size).apply()
    seed_everything(t.seed)
    netG, netD = build_models(cfg.model)
    speed.place(netG, netD)
    if t.sync_bn and dist.enabled:
        distributed.convert_sync_batchnorm(netG, device)
        distributed.convert_sync_batchnorm(netD, device)
    G = distributed.wrap(netG, dist, device)
    D = distributed.wrap(netD, dist, device, partly_used=cfg.model.d_recon)
    D_for_g: torch.nn.Module = netD
    if t.compile != "off":
        G = compile_module(G, t.compile, device)
        D = compile_module(D, t.compile, device)
        D_for_g = compile_module(netD, t.compile, device) if dist.enabled else D
    for note in speed.notes:
        info(note)
    optG, optD = speed.optimizers(netG, netD, o)
    ema = GeneratorEMA(netG, o.ema) if o.ema else None
    bn_noise = None
    if ema is not None:  # the EMA generator's BatchNorm statistics are measured on these (training/ema.py)
        bn_noise = fixed_noise(BN_CALIBRATION_COUNT, cfg.model.z_dim, t.seed, stream=BN_CALIBRATION).to(
            device
        )
    return Run(
        cfg=cfg,
        device=device,
        dist=dist,
        local_batch=t.batch_size // dist.world_size,
        speed=speed,
        netG=netG,
        netD=netD,
        G=G,
        D=D,
        D_for_g=D_for_g,
        optG=optG,
        optD=optD,
        loss=make_loss(o.loss, o.label_smoothing),
        augment=parse_policy(o.augment),
        augment_strength=(
            AugmentStrength(o.augment_p, o.ada_target, o.ada_images, t.batch_size, device)
            if o.augment and (o.augment_p < 1 or o.ada_target)
            else None
        ),
        lecam=(
            LeCam(o.lecam, o.lecam_decay, device, lambda x: distributed.all_mean(x, dist))
            if o.lecam
            else None
        ),
        ema=ema,
        bn_noise=bn_noise,
    )


def load_data(cfg: Config, dist: distributed.DistInfo, reporter) -> tuple[ImageSet, np.ndarray, np.ndarray]:
    """Decode (or read the cache of) the folder; the images, the rows to train on and those held out."""
    if dist.is_main:
        images = load_images(cfg, progress=reporter.decode_progress)
        copies = _copies(images)  # found once and stored beside the cache entry
    # The other ranks wait for rank 0 to fill the cache, then read it.
    distributed.barrier(dist)
    if not dist.is_main:
        images = load_images(cfg)
        copies = _copies(images)
    reporter.data_summary(images)
    train_rows, held_rows = holdout_split(len(images), cfg.data.holdout)
    if copies is not None and cfg.data.drop_duplicates:
        before = len(train_rows)
        train_rows = copies.training_rows(train_rows, held_rows)
        reporter.info(f"--drop-duplicates: training on {len(train_rows):,} of {before:,} rows")
    elif copies is not None and (line := copies.warning_line(images.names, images.source)):
        reporter.warn(line)
    if len(train_rows) < cfg.train.batch_size:
        held = f" after holding out {len(held_rows)}" if len(held_rows) else ""
        raise UserError(
            f"{images.source}: {len(train_rows)} usable images{held}, fewer than one batch of "
            f"{cfg.train.batch_size} (lower --batch-size)"
        )
    return images, train_rows, held_rows


def _copies(images: ImageSet) -> duplicates.Duplicates | None:
    """A folder's exact and near copies (none looked for among the procedural demo faces)."""
    return duplicates.load_or_find(images.images, images.cache_path) if images.names else None


def check_run_dir(run_dir: Path, subdirs: tuple[Path, ...], run: Run, made: list[Path]) -> None:
    """Fail before any training if the run dir can't take a checkpoint. Appends the dirs it makes."""
    try:
        for d in (*reversed(run_dir.parents), run_dir, *subdirs):
            if not d.exists():
                d.mkdir()
                made.append(d)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{run_dir}: run directory is not writable ({e.strerror or e})") from None
    need = checkpoint_bytes(run) * 2
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise UserError(
            f"{run_dir}: only {free / 2**20:.0f} MiB free, a checkpoint needs about {need / 2**20:.0f} MiB"
        )


def checkpoint_bytes(run: Run) -> int:
    params = sum(p.numel() for p in run.netG.parameters()) + sum(p.numel() for p in run.netD.parameters())
    return params * 4 * 3 + (1 << 20)  # weights + two Adam moments, fp32
