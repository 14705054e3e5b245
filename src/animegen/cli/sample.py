"""`animegen generate`, `interpolate`, `evaluate` and `runs`: flags -> the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from animegen.errors import UserError


def _generate(args: argparse.Namespace) -> int:
    from animegen.generate import write_files, write_grid
    from animegen.model_loading import load_generator
    from animegen.sampling import check_truncation

    if args.n < 1:
        raise UserError("-n must be at least 1")
    check_truncation(args.truncation)
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

        # Chunk after chunk frees and reallocates the same buffers: keeping them mapped is faster
        # (docs/design-notes.md).
        allocator.keep_freed_memory()
    for note in gen.info.get("notes", []):
        print(f"warning: skipped damaged checkpoint: {note}", file=sys.stderr)
    if args.best_of is not None:
        return _generate_best_of(args, gen)
    if args.grid:
        path = write_grid(
            gen,
            args.n,
            args.grid,
            nrow=args.nrow,
            seed=args.seed,
            bn_mode=args.bn,
            truncation=args.truncation,
        )
        print(f"wrote {args.n} faces to {path}")
    if args.outdir:
        paths = write_files(
            gen, args.n, args.outdir, seed=args.seed, bn_mode=args.bn, truncation=args.truncation
        )
        print(f"wrote {len(paths)} files to {args.outdir}")
    return 0


def _generate_best_of(args: argparse.Namespace, gen) -> int:
    from animegen.best_of import best_of, load_discriminator
    from animegen.visual import save_grid, save_png

    # gen.source is the resolved file, so D comes from the very checkpoint G came from.
    disc = load_discriminator(gen.source, device=gen.device)
    images, scores, indices = best_of(
        gen, disc, args.n, args.best_of, seed=args.seed, bn_mode=args.bn, truncation=args.truncation
    )
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
    from animegen.generate import write_interpolation
    from animegen.model_loading import load_generator

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
    from animegen.metrics.evaluation import METRICS, evaluate, format_result
    from animegen.model_loading import load_generator

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
    real_images, data_key, train_images = real.images, real.key, None
    if args.neighbours and not args.holdout:
        raise UserError("--neighbours needs --holdout FRACTION: the held-out faces are the baseline")
    if args.holdout:
        from animegen.data.split import holdout_split

        if not 0 < args.holdout < 1:
            raise UserError(f"--holdout must be in (0, 1), not {args.holdout}")
        train, held = holdout_split(len(real), args.holdout)
        # The same rows, and the same feature-cache key, as training's --holdout on this folder.
        real_images, data_key = real.images[held], f"{real.key}|holdout={args.holdout}"
        train_images = real.images[train]  # "does it copy?" asks of the faces it trained on
    result = evaluate(
        gen,
        real_images,
        data_key=data_key,
        cache_dir=real.cache_path,
        n=args.n,
        metrics=metrics,
        precision_recall=args.pr,
        inception_path=args.inception,
        face_encoder_path=args.face_encoder,
        seed=args.seed,
        truncation=args.truncation,
        bn_mode=args.bn,
        nearest=args.nearest,
        nearest_out=nearest_out,
        train_images=train_images,
        neighbours_out=Path(args.neighbours) if args.neighbours else None,
        progress=None if args.quiet else (lambda m: print(m, file=sys.stderr)),
    )
    result["weights"] = gen.info["weights"]
    result["data"] = str(args.data)
    result["holdout"] = args.holdout
    result["limit"] = args.limit
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    if nearest_out:
        print(f"wrote nearest neighbours to {nearest_out}")
    if args.neighbours:
        print(f"wrote the closest matches to training faces to {args.neighbours}")
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
