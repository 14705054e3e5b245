"""`animegen train` and `animegen demo`: flags -> config -> the Trainer."""

from __future__ import annotations

import argparse
import time

from animegen.cli.common import _add_device_flag
from animegen.config import AMP_MODES, COMPILE_MODES, PRESETS
from animegen.errors import UserError


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
        "--drop-duplicates",
        action="store_const",
        const=True,
        default=None,
        help="train on one face of each group of exact or near copies in the folder (reported either way)",
    )
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
        "--checkpoint-minutes",
        type=float,
        metavar="M",
        help="also checkpoint when M minutes passed since the last checkpoint (default 10; 0: off)",
    )
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
        "--max-restarts",
        type=int,
        metavar="N",
        help="with --nproc: when a process fails, restart them all from the newest checkpoint, "
        "up to N times (torchrun's --max-restarts)",
    )
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
        "data.drop_duplicates": args.drop_duplicates,
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
        "train.checkpoint_minutes": args.checkpoint_minutes,
        "train.sync_bn": args.sync_bn,
        "train.tensorboard": args.tensorboard,
        "model.image_size": args.image_size,
        "run.name": args.name,
    }


def _without_nproc(argv: list[str]) -> list[str]:
    """argv less the launcher's own flags (--nproc N, --max-restarts N)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--nproc", "--max-restarts"):
            skip = True
        elif not a.startswith(("--nproc=", "--max-restarts=")):
            out.append(a)
    return out


def _train(args: argparse.Namespace, demo: bool = False) -> int:
    from animegen.training import distributed

    info = distributed.from_env()
    if args.max_restarts and not (args.nproc and args.nproc > 1):
        raise UserError("--max-restarts restarts the processes of --nproc N (N >= 2)")
    if args.nproc and args.nproc > 1 and not info.enabled:
        argv = _without_nproc(args.argv)
        if args.max_restarts and getattr(args, "resume", None) is None:
            if not args.run_dir:
                raise UserError("--max-restarts needs --run-dir: a restarted process continues the run there")
            argv.append("--resume")  # a restarted process continues the run rather than refusing its dir
        return distributed.launch(args.nproc, argv, max_restarts=args.max_restarts or 0)
    try:
        code = _train_process(args, demo, info)
        # Without it a rank that finishes first tears gloo down under the other, whose gloo
        # thread then aborts the process ("terminate called without an active exception").
        distributed.barrier(info)
        return code
    finally:
        distributed.shutdown()


def _train_process(args: argparse.Namespace, demo: bool, info) -> int:
    from animegen.training.loop import Trainer, TrainingInterrupted
    from animegen.training.progress import Reporter
    from animegen.training.session import TrainRequest, plan_run

    # Only rank 0 talks; the others would repeat every line.
    reporter = Reporter(quiet=args.quiet or not info.is_main)
    resume = getattr(args, "resume", None)
    request = TrainRequest(
        preset=args.preset,
        config_file=args.config,
        overrides=_overrides(args),
        sets=args.set,
        run_dir=args.run_dir,
        # `--resume` alone (with --run-dir) starts the run there if there is none, else continues it
        resume=False if resume is None else (True if resume == "" else resume),
        demo=demo,
    )
    plan = plan_run(request, info, warn=reporter.warn)
    for note in plan.notes:
        reporter.info(note)
    cfg, run_dir = plan.cfg, plan.run_dir
    trainer = Trainer(cfg, run_dir, reporter, resume_from=plan.resume_from)
    started = time.perf_counter()
    trainer.prepare()
    try:
        result = trainer.run()
    except TrainingInterrupted as stopped:
        # 128 + the signal's number, as a shell reports a process the signal ended: 130 for
        # Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1; a job script can requeue on it.
        return 128 + stopped.signum
    elapsed = time.perf_counter() - started
    if not info.is_main:
        return 0
    if demo:
        from animegen.generate import write_grid, write_interpolation
        from animegen.model_loading import load_generator

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
