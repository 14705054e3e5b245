"""Starting a run or continuing one, by one rule for the command line and the Python API.

A scheduler that kills and requeues a job runs the same command line again. So `resume=True` with a
run dir means: continue the run there if there is one, start it there if there is none. A run dir
is in one of four states, told apart by what it holds:
- nothing (missing, empty, or only the empty folders a start killed while decoding leaves): a new run;
- config.json but no checkpoint yet: the run starts from step 0 with its saved settings;
- checkpoints: the run continues from the newest one that verifies;
- anything else (files that are not a run's): refused, never written into.
Continuing a run starts from its saved settings; the request's settings change them, except those
in FROZEN, which would make the checkpoint's weights or its held-out evaluation mean something else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animegen import checkpoint_format as ckpt
from animegen.config import Config, apply_changes, build_config
from animegen.config_values import read_config_file
from animegen.errors import UserError
from animegen.training import distributed
from animegen.training.run_lock import is_temp_file

# Saved settings a continued run keeps, and why. The architecture: the checkpoint's weights fit only
# it. The held-out fraction: a new split would evaluate on faces the run has trained on.
FROZEN = {
    **{
        f"model.{key}": "a run keeps its architecture"
        for key in (
            "arch",
            "image_size",
            "z_dim",
            "width",
            "d_first_bn",
            "d_norm",
            "d_recon",
            "d_backbone",
            "d_input",
            "d_pixel",
        )
    },
    "data.holdout": "a run keeps its held-out split",
}

# What a run dir may hold besides config.json and checkpoints/ and still be a run (or a run's start).
RUN_FILES = {"checkpoints", "samples", "log.jsonl", "loss.png", "tensorboard", ".lock"}


@dataclass
class TrainRequest:
    """What to train, as the command line or the Python API asked for it.

    `overrides` maps "section.key" to a value (None: not given); `sets` holds "section.key=value"
    strings as --set takes them; the config file's values come before both, the preset's before that.
    `resume`: False starts a new run; True continues the run at `run_dir`, or starts it there if there
    is none; a path continues the run in that folder (or from that checkpoint file).
    """

    preset: str | None = None
    config_file: str | Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)
    run_dir: str | Path | None = None
    resume: bool | str | Path = False
    demo: bool = False


@dataclass
class RunPlan:
    """What the trainer does: train `cfg` in `run_dir`, from `resume_from` (a checkpoint) or step 0."""

    cfg: Config
    run_dir: Path
    resume_from: Path | None = None
    saved_config: bool = False  # starting from step 0 with the run's saved config.json
    notes: list[str] = field(default_factory=list)  # one line each, for the user


@dataclass
class RunDirContents:
    path: Path
    config: dict[str, Any] | None = None
    checkpoint: Path | None = None  # the newest one that verifies
    skipped: list[str] = field(default_factory=list)  # newer checkpoints that did not verify

    @property
    def started(self) -> bool:
        return self.config is not None or self.checkpoint is not None


def look_at(run_dir: Path) -> RunDirContents:
    """What a run dir holds; a folder that holds something else is a one-line UserError."""
    found = RunDirContents(run_dir)
    if not run_dir.exists():
        return found
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a run dir")
    config_path = run_dir / "config.json"
    if ckpt.list_checkpoints(run_dir / "checkpoints"):
        # A checkpoint carries its config: config.json is only read for a run without one yet.
        found.checkpoint, found.skipped = ckpt.latest_good_checkpoint(run_dir / "checkpoints")
    elif config_path.exists():
        try:
            data = json.loads(config_path.read_text())
            Config.from_dict(data)
        except (OSError, ValueError, UserError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{config_path}: not an animegen run's config ({first})") from None
        found.config = data
    else:
        strangers = sorted(
            p.name for p in run_dir.iterdir() if p.name not in RUN_FILES and not is_temp_file(p)
        )
        if strangers:
            raise UserError(
                f"{run_dir}: holds files that are not an animegen run ({strangers[0]}, ...); "
                "choose an empty or new --run-dir"
            )
    return found


def plan_run(
    req: TrainRequest,
    dist: distributed.DistInfo | None = None,
    warn: Callable[[str], None] = lambda _m: None,
) -> RunPlan:
    """Decide what to train and from where; raises UserError (one line) for what cannot be done.

    Nothing is written. Under torchrun every rank plans; the trainer writes only after all have.
    """
    dist = dist or distributed.DistInfo()
    if req.resume is True or req.resume == "":
        if req.run_dir is None:
            raise UserError("--resume needs a run dir: --resume RUN_DIR (or --run-dir RUN_DIR --resume)")
        run_dir = Path(req.run_dir)
        contents = look_at(run_dir)
        if contents.started:
            return _continue(req, contents, warn)
        plan = _new_run(req, dist, run_dir)
        plan.notes.append(f"{run_dir}: no run there yet, starting one")
        return plan
    if req.resume:
        target = Path(req.resume)
        if target.is_file():  # one checkpoint named: continue from it
            contents = RunDirContents(target.parent.parent, checkpoint=target)
            _, meta = ckpt.read_checkpoint(target)
            contents.config = meta.get("config", {})
            return _continue(req, contents, warn)
        if not target.exists():
            raise UserError(
                f"{target}: no such run dir (to start a run there when none exists, "
                f"use --run-dir {target} --resume)"
            )
        contents = look_at(target)
        if not contents.started:
            raise UserError(
                f"{target}: no checkpoint and no config.json, so no run to continue (it never got past "
                f"loading its images); start it again with its full command, or --run-dir {target} --resume"
            )
        return _continue(req, contents, warn)
    return _new_run(req, dist, Path(req.run_dir) if req.run_dir is not None else None)


def _new_run(req: TrainRequest, dist: distributed.DistInfo, run_dir: Path | None) -> RunPlan:
    preset = req.preset or ("demo" if req.demo else None)
    cfg = build_config(preset, req.config_file, req.overrides, req.sets)
    if req.overrides.get("run.name") is None and cfg.run.name == "run":
        cfg.run.name = cfg.preset
    notes = []
    if run_dir is not None:
        # Under torchrun rank 0 may already have written here by the time another rank looks.
        if dist.is_main:
            contents = look_at(run_dir)
            if contents.checkpoint is not None:
                raise UserError(
                    f"{run_dir}: already holds a run; continue it with --resume {run_dir}, "
                    "or choose another --run-dir"
                )
    elif dist.enabled:
        raise UserError("multi-process runs need an explicit --run-dir (every process must agree on it)")
    else:
        run_dir = free_run_dir(cfg.run.name)
    if cfg.data.path is None and not req.demo:
        notes.append(
            "no --data given: training on the built-in procedural demo faces "
            f"({cfg.data.demo_count:,} images); pass --data DIR to use your own folder"
        )
    cfg.run.run_dir = str(run_dir)
    return RunPlan(cfg, run_dir, notes=notes)


def _continue(req: TrainRequest, contents: RunDirContents, warn: Callable[[str], None]) -> RunPlan:
    for note in contents.skipped:
        warn(f"skipping damaged checkpoint: {note}")
    source = contents.checkpoint or contents.path / "config.json"
    saved = contents.config or {}
    if contents.checkpoint is not None:  # the checkpoint's settings are what its weights were trained with
        _, meta = ckpt.read_checkpoint(contents.checkpoint)
        saved = meta.get("config", {})
    cfg = continued_config(saved, req, source)
    cfg.run.run_dir = str(contents.path)
    plan = RunPlan(cfg, contents.path, resume_from=contents.checkpoint)
    if contents.checkpoint is None:
        plan.saved_config = True
        plan.notes.append(
            f"{contents.path}: no checkpoint yet; starting it from step 0 with its saved config.json"
        )
    return plan


def continued_config(saved: dict[str, Any], req: TrainRequest, source: Path) -> Config:
    """A run's saved settings with the request's changes; a change to a FROZEN one is a UserError."""
    cfg = Config.from_dict(saved)
    file_data = read_config_file(req.config_file) if req.config_file else {}
    for preset in (req.preset, file_data.get("preset")):
        if preset is not None and preset != cfg.preset:
            raise UserError(
                f"{source}: trained with --preset {cfg.preset}, cannot continue as --preset {preset} "
                "(drop it, or start a new --run-dir)"
            )
    apply_changes(cfg, file_data, str(req.config_file), req.sets, req.overrides)
    for dotted, why in FROZEN.items():
        section, key = dotted.split(".")
        old = saved.get(section, {}).get(key)
        new = getattr(getattr(cfg, section), key)
        if key in saved.get(section, {}) and old != new:
            raise UserError(
                f"{source}: trained with {dotted}={old!r}, cannot resume with {dotted}={new!r} "
                f"({why}; drop that flag or start a new --run-dir)"
            )
    return cfg


def free_run_dir(name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3, ... if it holds something."""
    base = Path("runs") / name
    if not base.exists() or not any(base.iterdir()):
        return base
    i = 2
    while (Path("runs") / f"{name}-{i}").exists():
        i += 1
    return Path("runs") / f"{name}-{i}"


def train(
    data: str | Path | None = None,
    preset: str | None = None,
    run_dir: str | Path | None = None,
    resume: bool | str | Path = False,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Train from Python as `animegen train` does, by the same rules.

    `train(data="faces", preset="modern", run_dir="runs/faces", resume=True,
    overrides={"train.epochs": 40})` starts runs/faces the first time and continues it every time
    after. Returns {"checkpoint": path of the final checkpoint, "position": ..., the last losses}.
    Raises TrainingInterrupted (its `signum` says which signal) when a signal stopped the run after
    a checkpoint, and UserError for what cannot be done.
    """
    from animegen.training.loop import Trainer
    from animegen.training.progress import Reporter

    reporter = Reporter(quiet=quiet)
    req = TrainRequest(
        preset=preset,
        config_file=config_file,
        overrides={"data.path": str(data) if data is not None else None, **(overrides or {})},
        run_dir=run_dir,
        resume=resume,
    )
    dist = distributed.from_env()
    plan = plan_run(req, dist, warn=reporter.warn)
    for note in plan.notes:
        reporter.info(note)
    trainer = Trainer(plan.cfg, plan.run_dir, reporter, resume_from=plan.resume_from)
    trainer.prepare()
    return trainer.run()
