"""`animegen train` and `animegen demo`: flags -> config -> the Trainer."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from animegen.cli.common import EXIT_INTERRUPTED, _add_device_flag
from animegen.config import AMP_MODES, COMPILE_MODES, PRESETS
from animegen.errors import UserError

# Saved settings that shape the networks: a resumed run cannot change them.
ARCH_KEYS = (
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


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", metavar="DIR", help="folder of images, searched recursively (default: built-in demo faces)"
    )
    p.add_argument("--preset", help=f"{', '.join(PRESETS)} (default: default, or the config file's)")
    p.add_argument(
        "--config", metavar="FILE", help="YAML or TOML file with [model] [data] [optim] [train] sections"
    )
    p.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override any config value, e.g. --set optim.lr_g=1e-4 (repeatable)",
    )
    p.add_argument("--epochs", type=int, help="total epochs (a resumed run continues up to this number)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, help="64, 96 or 128 (also 16-48 and 192)")
    p.add_argument("--seed", type=int, help="makes a CPU run deterministic")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N images (sorted by path)")
    p.add_argument(
        "--hflip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips"
    )
    _add_device_flag(p)
    p.add_argument(
        "--amp",
        choices=AMP_MODES,
        help="bf16 autocast for the forward passes (auto: bf16 on a CPU with native bf16, else off)",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        help="torch.compile G and D; the first steps take longer (CUDA graphs: --cuda-graph)",
    )
    p.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="capture the whole training step as one CUDA graph (CUDA, one process; no augment/R1); "
        "the default preset does where it can",
    )
    p.add_argument(
        "--holdout",
        type=float,
        metavar="FRACTION",
        help="keep this fraction of the images out of training, for --eval-every",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help="every N iterations: FID/KID/SWD/FD-SSL on the held-out images into log.jsonl, "
        "and checkpoints/best.safetensors by FD-SSL",
    )
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N iterations in total (quick runs)")
    p.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="stop after M minutes of training in total (held-out evaluations do not count)",
    )
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="also checkpoint every N iterations")
    p.add_argument(
        "--workers", type=int, metavar="N", help="decode threads for the first pass over the folder"
    )
    p.add_argument(
        "--cache-dir", metavar="DIR", help="where decoded images are cached (default ~/.cache/animegen)"
    )
    p.add_argument("--run-dir", metavar="DIR", help="default: runs/<name>, numbered if it exists")
    p.add_argument("--name", help="run name (default: the preset's)")
    p.add_argument("--nproc", type=int, metavar="N", help="train with N processes under torchrun (DDP)")
    p.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="synchronise BatchNorm across processes",
    )
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write TensorBoard events to RUN_DIR/tensorboard",
    )
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "data.path": args.data,
        "data.limit": args.limit,
        "data.hflip": args.hflip,
        "data.workers": args.workers,
        "data.cache_dir": args.cache_dir,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.seed": args.seed,
        "train.device": args.device,
        "train.amp": args.amp,
        "train.compile": args.compile,
        "train.cuda_graph": args.cuda_graph,
        "train.eval_every": args.eval_every,
        "data.holdout": args.holdout,
        "train.max_steps": args.max_steps,
        "train.max_minutes": args.max_minutes,
        "train.checkpoint_every": args.checkpoint_every,
        "train.sync_bn": args.sync_bn,
        "train.tensorboard": args.tensorboard,
        "model.image_size": args.image_size,
        "run.name": args.name,
    }


def _free_run_dir(name: str) -> Path:
    base = Path("runs") / name
    if not base.exists() or not any(base.iterdir()):
        return base
    i = 2
    while (Path("runs") / f"{name}-{i}").exists():
        i += 1
    return Path("runs") / f"{name}-{i}"


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _train(args: argparse.Namespace, demo: bool = False) -> int:
    from animegen.training import distributed

    info = distributed.from_env()
    if args.nproc and args.nproc > 1 and not info.enabled:
        return distributed.launch(args.nproc, _without_nproc(args.argv))
    try:
        code = _train_process(args, demo, info)
        # Without it a rank that finishes first tears gloo down under the other, whose gloo
        # thread then aborts the process ("terminate called without an active exception").
        distributed.barrier(info)
        return code
    finally:
        distributed.shutdown()


def _train_process(args: argparse.Namespace, demo: bool, info) -> int:
    from animegen import checkpoint_format as ckpt
    from animegen.config import Config, build_config, set_value
    from animegen.training.loop import Trainer, TrainingInterrupted
    from animegen.training.progress import Reporter

    # Only rank 0 talks; the others would repeat every line.
    reporter = Reporter(quiet=args.quiet or not info.is_main)
    resume_path = None
    if getattr(args, "resume", None) is not None:
        run_dir = Path(args.resume if args.resume != "" else (args.run_dir or ""))
        if not str(run_dir):
            raise UserError("--resume needs a run dir: --resume RUN_DIR (or --run-dir RUN_DIR --resume)")
        if run_dir.is_file():
            resume_path, run_dir = run_dir, run_dir.parent.parent
        else:
            if not (run_dir / "checkpoints").is_dir():
                raise UserError(f"{run_dir}: not a run dir (no checkpoints/ folder)")
            resume_path, notes = ckpt.latest_good_checkpoint(run_dir / "checkpoints")
            for note in notes:
                reporter.warn(f"skipping damaged checkpoint: {note}")
        _, meta = ckpt.read_checkpoint(resume_path)
        cfg = Config.from_dict(meta.get("config", {}))
        for item in args.set:
            from animegen.config_values import parse_override

            key, value = parse_override(item)
            set_value(cfg, key, value, "--set")
        for key, value in _overrides(args).items():
            if value is not None:
                set_value(cfg, key, value, "command line")
        cfg.validate()
        saved = meta.get("config", {}).get("model", {})
        for key in ARCH_KEYS:
            if key in saved and saved[key] != getattr(cfg.model, key):
                raise UserError(
                    f"{resume_path}: trained with model.{key}={saved[key]!r}, cannot resume with "
                    f"model.{key}={getattr(cfg.model, key)!r} (a run keeps its architecture; "
                    "drop that flag or start a new --run-dir)"
                )
    else:
        cfg = build_config(args.preset or ("demo" if demo else None), args.config, _overrides(args), args.set)
        if args.name is None and cfg.run.name == "run":
            cfg.run.name = cfg.preset
        if args.run_dir:
            run_dir = Path(args.run_dir)
            if info.is_main and ckpt.list_checkpoints(run_dir / "checkpoints"):
                raise UserError(
                    f"{run_dir}: already holds a run; continue it with --resume {run_dir}, "
                    "or choose another --run-dir"
                )
        elif info.enabled:
            raise UserError("multi-process runs need an explicit --run-dir (every process must agree on it)")
        else:
            run_dir = _free_run_dir(cfg.run.name)
        if cfg.data.path is None and not demo:
            reporter.info(
                "no --data given: training on the built-in procedural demo faces "
                f"({cfg.data.demo_count:,} images); pass --data DIR to use your own folder"
            )
    cfg.run.run_dir = str(run_dir)
    trainer = Trainer(cfg, run_dir, reporter, resume_from=resume_path)
    started = time.perf_counter()
    trainer.prepare()
    try:
        result = trainer.run()
    except TrainingInterrupted:
        return EXIT_INTERRUPTED
    elapsed = time.perf_counter() - started
    if not info.is_main:
        return 0
    if demo:
        from animegen.generate import load_generator, write_grid, write_interpolation

        gen = load_generator(result["checkpoint"])
        grid = write_grid(gen, 64, run_dir / "demo_grid.png", nrow=8, seed=0)
        gif = write_interpolation(gen, run_dir / "walk.gif", steps=48, seed=0, scale=2)
        print(f"demo finished in {elapsed / 60:.1f} min")
        print(f"  samples per epoch: {run_dir / 'samples'}")
        print(f"  final grid:        {grid}")
        print(f"  interpolation:     {gif}")
        print(f"  checkpoint:        {result['checkpoint']}")
        print(f"next: animegen generate {run_dir} -n 64 --grid faces.png")
    elif not args.quiet:
        print(
            f"done in {elapsed / 60:.1f} min; checkpoint {result['checkpoint']}; "
            f"samples in {run_dir / 'samples'}"
        )
    return 0
