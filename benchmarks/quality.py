"""Quality study: presets trained on the same folder, scored on held-out faces at equal images and equal time.

For each preset (or variant), one `animegen train` run with `--holdout` (the same held-out rows for
every run) and held-out SWD every `--every-images` images. A run stops after `--images` images, or
with `--minutes`, after that much training time (evaluations pause the clock), so runs sharing
the machine get the same compute and the same-wall-clock comparison is the final row.

FID/KID need the Inception network, which costs far more than training on a small CPU, so they are
computed after training, with `animegen evaluate` on kept checkpoints (n faces per side):
  - without --fid-fractions, on each run's final generator;
  - with --fid-fractions 0.25 0.5 1, also at those fractions of the FIRST run's final images (the
    checkpoint nearest each point in every run), which answers "does run B reach run A's final
    FID in a quarter of A's images?"

  python benchmarks/quality.py --data DIR --size 64 --minutes 50 --every-images 1000 \
      --fid-fractions 0.25 0.5 1 --n 300 --parallel 3 --out study64 [--presets seed default modern]
  python benchmarks/quality.py --data DIR --size 64 --images 16000 --out study64     # equal images

With --marks 30 60 (minutes, instead of --minutes), each run trains to the first mark, keeps a copy
of its checkpoint there, resumes exactly to the next, and so on; every mark is scored, so the runs
are compared at equal wall time at each mark (the equal-time rows of docs/quality.md):
  python benchmarks/quality.py --data DIR --size 64 --marks 30 60 --every-images 16000 --n 1000 \
      --parallel 2 --threads 1 --out OUT --presets modern projected

With --reuse, runs already in --out are scored again instead of retrained (add a preset to an
earlier study at equal images, or score it at a larger n), and a checkpoint's evaluation JSON is
reused when it was made against the same held-out faces at the same n.

Runs go `--parallel` at a time, each with `--threads` torch threads, so on a small CPU they share
the cores evenly; the wall times are then comparable with each other, not with a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from animegen.checkpoint_format import latest_good_checkpoint, read_checkpoint  # noqa: E402
from animegen.config import build_config  # noqa: E402
from animegen.runlog import read_log  # noqa: E402

SCORES = ("fid", "kid", "kid_std", "swd", "fd_ssl", "n_fake", "n_real")


def env(threads: int) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["OMP_NUM_THREADS"] = str(threads)
    return e


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """'NAME=PRESET ARG ARG ...' (e.g. 'modern-b16=modern --batch-size 16') or a plain preset name."""
    if "=" not in text.split()[0]:
        return text, text, []
    name, rest = text.split("=", 1)
    preset, *extra = rest.split()
    return name, preset, extra


def batch_of(variant: str) -> int:
    _, preset, extra = parse_variant(variant)
    if "--batch-size" in extra:
        return int(extra[extra.index("--batch-size") + 1])
    return build_config(preset).train.batch_size


def train(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    name, preset, extra = parse_variant(variant)
    batch = batch_of(variant)
    steps = max(1, args.images // batch)
    every = max(1, (args.every_images or args.images // args.points) // batch)
    run = args.out / f"{name}-{args.size}"
    cmd = [
        sys.executable, "-m", "animegen", "train", "--data", str(args.data), "--preset", preset, *extra,
        "--image-size", str(args.size), "--holdout", str(args.holdout), "--eval-every", str(every),
        "--set", "train.eval_metrics=swd,fd_ssl", "--set", f"train.eval_n={args.eval_n}",
        "--set", f"train.threads={args.threads}", "--epochs", "100000", "--run-dir", str(run),
        "--quiet", "--device", "cpu",
    ]  # fmt: skip
    if args.marks:
        cmd += ["--max-minutes", f"{args.marks[0]:g}"]
    elif args.minutes:
        cmd += ["--max-minutes", str(args.minutes)]
    else:
        cmd += ["--max-steps", str(steps)]
    if args.fid_fractions:  # keep a checkpoint at every evaluation point for FID afterwards
        cmd += ["--checkpoint-every", str(every), "--set", "train.keep_checkpoints=0"]
    else:
        cmd += ["--set", "train.keep_checkpoints=1"]
    if args.cache_dir:
        cmd += ["--cache-dir", str(args.cache_dir)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    started = time.perf_counter()
    reused = args.reuse and (run / "log.jsonl").exists()
    marks: dict[str, str] = {}
    if reused:  # a finished run of an earlier study: score it again, do not retrain it
        code = 0
        marks = {f"{m:g}": str(run / f"mark-{m:g}min.safetensors") for m in args.marks or []}
    else:
        with open(args.out / f"{name}-{args.size}.train.txt", "w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(args.threads))
            for k, mark in enumerate(args.marks or []):
                if code != 0:
                    break
                if k:
                    resume = [sys.executable, "-m", "animegen", "train", "--resume", str(run)]
                    resume += ["--max-minutes", f"{mark:g}", "--quiet"]
                    code = subprocess.call(
                        resume, stdout=log, stderr=subprocess.STDOUT, env=env(args.threads)
                    )
                if code == 0:  # the run's checkpoint at this mark, kept apart from later pruning
                    newest, _ = latest_good_checkpoint(run / "checkpoints")
                    kept = run / f"mark-{mark:g}min.safetensors"
                    shutil.copyfile(newest, kept)
                    marks[f"{mark:g}"] = str(kept)
    rows = read_log(run / "log.jsonl")
    evals = [r for r in rows if r.get("kind") == "eval" and "swd" in r]
    last_iteration = max((r.get("iteration", 0) for r in rows), default=0)
    return {
        "preset": name,
        "command": " ".join(cmd[3:]),
        "size": args.size,
        "batch": batch,
        "steps": last_iteration,
        "images": last_iteration * batch,
        "train_exit": code,
        "reused": reused,
        "seconds": round(time.perf_counter() - started, 1) if not reused else None,  # with evaluations
        "train_seconds": evals[-1].get("train_seconds", evals[-1]["wall_time"]) if evals else None,
        "run": str(run),
        "every_images": every * batch,
        "marks": marks,
        "curve": [
            {
                "images": r["iteration"] * batch,
                "train_seconds": r.get("train_seconds", r["wall_time"]),
                "swd": r["swd"],
                "fd_ssl": r.get("fd_ssl"),
                "d_gap": r.get("d_gap"),
            }
            for r in evals
        ],
    }


def checkpoints_by_images(result: dict[str, Any]) -> dict[int, Path]:
    from animegen.checkpoint_format import CKPT_RE

    found = {}
    for p in (Path(result["run"]) / "checkpoints").glob("ckpt_*.safetensors"):
        m = CKPT_RE.match(p.name)
        if m:
            found[int(m.group(2)) * result["batch"]] = p
    return found


def fid_points(results: list[dict[str, Any]], fractions: list[float]) -> list[dict[str, Any]]:
    """Checkpoints to score: each run's final one, and with fractions, the one nearest each fraction
    of the first run's final images if one is that near. Each point names its run index, target
    images, checkpoint images and path, and whether it is the run's final checkpoint."""
    reference = results[0]["images"]
    points: dict[tuple[int, int], dict[str, Any]] = {}
    for i, r in enumerate(results):
        kept = checkpoints_by_images(r)
        if not kept:
            continue
        final = max(kept)
        points[(i, final)] = {"run": i, "target": final, "images": final, "ckpt": kept[final], "final": True}
        for f in fractions:
            target = round(reference * f)
            near = min(kept, key=lambda images, t=target: abs(images - t))
            if abs(near - target) <= 0.75 * r["every_images"]:
                point = {
                    "run": i,
                    "target": target,
                    "images": near,
                    "ckpt": kept[near],
                    "final": near == final,
                }
                points[(i, near)] = point
    return sorted(points.values(), key=lambda p: (p["run"], p["images"]))


def cached_scores(out: Path, ckpt: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """An earlier evaluation of this very checkpoint against the same held-out faces, if any."""
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        return None
    same = (
        out.stat().st_mtime >= ckpt.stat().st_mtime
        and old.get("checkpoint") == str(ckpt)
        and old.get("data") == str(args.data)
        and old.get("holdout") == args.holdout
        and old.get("limit") == args.limit
        and old.get("n_fake") == args.n
    )
    return old if same else None


def evaluate_checkpoint(ckpt: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    out = ckpt.with_suffix(f".n{args.n}.eval.json")
    old = cached_scores(out, ckpt, args)
    if old is not None:
        return {k: old.get(k) for k in SCORES}
    ev = [
        sys.executable, "-m", "animegen", "evaluate", str(ckpt), "--data", str(args.data),
        "--holdout", str(args.holdout), "--n", str(args.n), "--json", str(out), "--quiet",
        "--device", "cpu",
    ]  # fmt: skip
    if args.cache_dir:
        ev += ["--cache-dir", str(args.cache_dir)]
    if args.limit:
        ev += ["--limit", str(args.limit)]
    with open(out.with_suffix(".txt"), "w") as log:
        if subprocess.call(ev, stdout=log, stderr=subprocess.STDOUT, env=env(args.threads)) != 0:
            return None
    final = json.loads(out.read_text())
    return {k: final.get(k) for k in SCORES}


def score(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """FID/KID/SWD at the chosen checkpoints, into each result's "scores" (by images) and "final"."""
    points = fid_points(results, args.fid_fractions)
    # The real side's Inception features are cached per folder: compute them once, not in parallel.
    first = [evaluate_checkpoint(points[0]["ckpt"], args)] if points else []
    with ThreadPoolExecutor(args.parallel) as pool:
        rest = list(pool.map(lambda p: evaluate_checkpoint(p["ckpt"], args), points[1:]))
    for p, metrics in zip(points, first + rest, strict=True):
        if metrics is None:
            continue
        r = results[p["run"]]
        r.setdefault("scores", []).append({"images": p["images"], "target": p["target"], **metrics})
        if p["final"]:
            r["final"] = {"images": p["images"], **metrics}


def score_marks(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """FID/KID/SWD/FD-SSL of each run's checkpoint at each --marks minute, into result["at_marks"]."""
    jobs = [(r, mark, Path(path)) for r in results for mark, path in r.get("marks", {}).items()]
    if not jobs:
        return
    first = [evaluate_checkpoint(jobs[0][2], args)]
    with ThreadPoolExecutor(args.parallel) as pool:
        rest = list(pool.map(lambda job: evaluate_checkpoint(job[2], args), jobs[1:]))
    for (r, mark, path), metrics in zip(jobs, first + rest, strict=True):
        if metrics is not None:
            _, meta = read_checkpoint(path)
            r.setdefault("at_marks", {})[mark] = {"images": meta["iteration"] * r["batch"], **metrics}
    for r in results:  # the last mark is the run's final generator
        if r.get("at_marks"):
            r["final"] = list(r["at_marks"].values())[-1]


def side_by_side(results: list[dict[str, Any]], out: Path) -> None:
    from PIL import Image, ImageDraw

    tiles = []
    for r in results:
        grids = sorted((Path(r["run"]) / "samples").glob("epoch_*.png"))
        if grids:
            tiles.append((r["preset"], Image.open(grids[-1]).convert("RGB")))
    if not tiles:
        return
    h = max(t.height for _, t in tiles) + 24
    canvas = Image.new("RGB", (sum(t.width for _, t in tiles) + 10 * (len(tiles) - 1), h), "white")
    x = 0
    draw = ImageDraw.Draw(canvas)
    for name, t in tiles:
        canvas.paste(t, (x, 24))
        draw.text((x + 4, 4), name, fill="black")
        x += t.width + 10
    canvas.save(out)


def plot_curves(results: list[dict[str, Any]], out: Path) -> None:
    """Held-out SWD by images seen and by training seconds, and FID at the scored checkpoints."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in results:
        c = r["curve"]
        axes[0].plot([p["images"] for p in c], [p["swd"] for p in c], marker=".", label=r["preset"])
        axes[1].plot(
            [p["train_seconds"] / 60 for p in c], [p["swd"] for p in c], marker=".", label=r["preset"]
        )
        scores = sorted(r.get("scores", []), key=lambda s: s["images"])
        if scores:
            axes[2].plot(
                [s["images"] for s in scores], [s["fid"] for s in scores], marker="o", label=r["preset"]
            )
    n_swd = next((r for r in results if r["curve"]), None)
    axes[0].set(xlabel="images seen", ylabel="held-out SWD x1e3", title="SWD by images")
    axes[1].set(
        xlabel="training minutes (evaluation excluded)", ylabel="held-out SWD x1e3", title="SWD by time"
    )
    axes[2].set(xlabel="images seen", ylabel="held-out FID", title="FID at scored checkpoints")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # --marks scores no FID curve
            ax.legend(fontsize=8)
    fig.suptitle(f"{results[0]['size']} px" + ("" if n_swd else " (no curves)"))
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def print_table(results: list[dict[str, Any]], fractions: list[float]) -> None:
    def num(f: dict[str, Any], key: str, digits: int) -> str:
        v = f.get(key)
        return f"{v:7.{digits}f}" if isinstance(v, (int, float)) else f"{'-':>7}"

    print("final generators (the same-wall-clock comparison when the runs had --minutes)")
    print(
        f"{'preset':<18} {'px':>3} {'batch':>5} {'images':>7} {'train s':>8} "
        f"{'FID':>7} {'KID':>7} {'SWD':>7} {'FD-SSL':>7} {'n':>5}"
    )
    for r in results:
        f = r.get("final", {})
        secs = r["train_seconds"] or r["seconds"] or 0
        print(
            f"{r['preset']:<18} {r['size']:>3} {r['batch']:>5} {r['images']:>7} {secs:>8.0f} "
            f"{num(f, 'fid', 1)} {num(f, 'kid', 4)} {num(f, 'swd', 1)} {num(f, 'fd_ssl', 2)} "
            f"{f.get('n_fake', '-')!s:>5}"
        )
    if fractions and results and results[0].get("final"):
        ref = results[0]
        print(
            f"\nFID at fractions of {ref['preset']}'s {ref['images']} images (checkpoint images in brackets)"
        )
        for r in results:
            cells = []
            for f in fractions:
                target = round(ref["images"] * f)
                hit = [s for s in r.get("scores", []) if s["target"] == target]
                if not hit:
                    cells.append(f"{f:g}: -")
                    continue
                h = hit[0]
                cells.append(f"{f:g}: FID {h['fid']:.1f} FD-SSL {h.get('fd_ssl') or 0:.2f} ({h['images']})")
            print(f"{r['preset']:<18} " + "  ".join(cells))
        goal = ref["final"].get("fid")
        if goal is not None:
            print(f"\nfirst checkpoint at or below {ref['preset']}'s final FID {goal:.1f}:")
            for r in results[1:]:
                hits = sorted(
                    (s["images"], s["fid"])
                    for s in r.get("scores", [])
                    if s.get("fid") is not None and s["fid"] <= goal
                )
                where = "none of the scored checkpoints"
                if hits:
                    images, fid = hits[0]
                    where = (
                        f"{images} images ({images / ref['images']:.2f} of {ref['images']}), FID {fid:.1f}"
                    )
                print(f"  {r['preset']:<18} {where}")
    marked = [r for r in results if r.get("at_marks")]
    if marked:
        print(
            "\nat each mark (equal training minutes; FD-SSL, SWD and Inception FID/KID on the held-out faces)"
        )
        print(
            f"{'preset':<18} {'min':>5} {'images':>8} {'FID':>7} {'KID':>7} {'SWD':>7} {'FD-SSL':>7} {'n':>5}"
        )
        for r in marked:
            for mark, f in r["at_marks"].items():
                print(
                    f"{r['preset']:<18} {mark:>5} {f['images']:>8} {num(f, 'fid', 1)} {num(f, 'kid', 4)} "
                    f"{num(f, 'swd', 1)} {num(f, 'fd_ssl', 2)} {f.get('n_fake', '-')!s:>5}"
                )
    print("\nheld-out SWD / FD-SSL by images seen (training seconds in brackets)")
    for r in results:
        curve = "  ".join(
            f"{p['images']}: {p['swd']:.1f} / {p.get('fd_ssl') or 0:.2f} ({p['train_seconds']:.0f} s)"
            for p in r["curve"]
        )
        print(f"{r['preset']:<18} {curve}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=16000, help="images seen per run (without --minutes)")
    p.add_argument("--minutes", type=float, help="training minutes per run instead of a number of images")
    p.add_argument(
        "--marks",
        type=float,
        nargs="+",
        help="training minutes at which every run is snapshotted and scored (instead of --minutes)",
    )
    p.add_argument(
        "--presets",
        nargs="+",
        default=["seed", "default", "modern"],
        help="preset names, or variants 'NAME=PRESET ARGS' (e.g. 'modern-b16=modern --batch-size 16')",
    )
    p.add_argument("--points", type=int, default=4, help="held-out SWD evaluations per run (with --images)")
    p.add_argument("--every-images", type=int, help="images between held-out SWD evaluations")
    p.add_argument("--eval-n", type=int, default=500, help="faces per side for the SWD curve")
    p.add_argument("--n", type=int, default=500, help="faces per side for FID/KID/SWD after training")
    p.add_argument(
        "--fid-fractions",
        type=float,
        nargs="*",
        default=[],
        help="also score checkpoints at these fractions of the first run's final images",
    )
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--limit", type=int)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep runs already in --out (a run dir with a log.jsonl) instead of training them again",
    )
    args = p.parse_args(argv)
    args.data = args.data.resolve()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.marks:
        args.marks = sorted(args.marks)
        if args.minutes or args.fid_fractions:
            p.error("--marks replaces --minutes and --fid-fractions")
    if (args.minutes or args.marks) and not args.every_images:
        p.error("--minutes needs --every-images (the number of images per run is not known in advance)")
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda preset: train(preset, args), args.presets))
    (args.out / "study.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.marks:
        score_marks(results, args)
    else:
        score(results, args)
    (args.out / "study.json").write_text(json.dumps(results, indent=2) + "\n")
    side_by_side(results, args.out / "side_by_side.png")
    plot_curves(results, args.out / "curves.png")
    budget = f"{args.minutes:g} training minutes" if args.minutes else f"{args.images} images"
    if args.marks:
        budget = "marks at " + ", ".join(f"{m:g}" for m in args.marks) + " training minutes"
    print(f"data {args.data}, held out {args.holdout:.0%}, {args.size} px, {budget} per run")
    print_table(results, args.fid_fractions)
    return 0 if all(r["train_exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
