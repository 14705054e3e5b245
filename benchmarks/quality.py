"""Quality study: presets trained on the same folder for the same number of images, scored on held-out faces.

For each preset, one `animegen train` run with `--holdout` (the same held-out rows for every
preset) and `--eval-every` at equal numbers of images seen, so the SWD curves line up by images
and, through each evaluation's wall time, by seconds. After training, `animegen evaluate
--holdout` gives FID/KID/SWD of the final generator (EMA when the preset has one) with n faces
per side. Prints one table and writes study.json, side_by_side.png (last sample grids) and each
run's loss.png under --out.

  python benchmarks/quality.py --data DIR --size 64 --images 16000 --out study64
      [--presets seed default modern] [--points 4] [--n 500] [--holdout 0.1] [--parallel 2] [--threads 1]

Runs go `--parallel` at a time, each with `--threads` torch threads, so on a small CPU they share
the cores evenly; the wall times are then comparable with each other, not with a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from animegen.config import build_config  # noqa: E402


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


def train(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    name, preset, extra = parse_variant(variant)
    batch = build_config(preset).train.batch_size
    if "--batch-size" in extra:
        batch = int(extra[extra.index("--batch-size") + 1])
    steps = max(1, args.images // batch)
    every = max(1, steps // args.points)
    run = args.out / f"{name}-{args.size}"
    cmd = [
        sys.executable, "-m", "animegen", "train", "--data", str(args.data), "--preset", preset, *extra,
        "--image-size", str(args.size), "--holdout", str(args.holdout), "--eval-every", str(every),
        "--set", "train.eval_metrics=swd", "--set", f"train.eval_n={args.eval_n}",
        "--set", f"train.threads={args.threads}", "--set", "train.keep_checkpoints=1",
        "--max-steps", str(steps), "--epochs", "100000", "--run-dir", str(run), "--quiet",
        "--device", "cpu",
    ]  # fmt: skip
    if args.cache_dir:
        cmd += ["--cache-dir", str(args.cache_dir)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    started = time.perf_counter()
    with open(args.out / f"{name}-{args.size}.train.txt", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(args.threads))
    result: dict[str, Any] = {
        "preset": name,
        "command": " ".join(cmd[3:]),
        "size": args.size,
        "batch": batch,
        "steps": steps,
        "images": steps * batch,
        "train_exit": code,
        "train_seconds": round(time.perf_counter() - started, 1),
        "run": str(run),
    }
    rows = []
    try:
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]
    except OSError:
        pass
    result["curve"] = [
        {"images": r["iteration"] * batch, "wall_time": r["wall_time"], "swd": r["swd"]}
        for r in rows
        if r.get("kind") == "eval" and "swd" in r
    ]
    if code == 0:
        out = args.out / f"{name}-{args.size}.eval.json"
        ev = [
            sys.executable, "-m", "animegen", "evaluate", str(run), "--data", str(args.data),
            "--holdout", str(args.holdout), "--n", str(args.n), "--json", str(out), "--quiet",
            "--device", "cpu",
        ]  # fmt: skip
        if args.cache_dir:
            ev += ["--cache-dir", str(args.cache_dir)]
        if args.limit:
            ev += ["--limit", str(args.limit)]
        with open(args.out / f"{name}-{args.size}.eval.txt", "w") as log:
            if subprocess.call(ev, stdout=log, stderr=subprocess.STDOUT, env=env(args.threads)) == 0:
                final = json.loads(out.read_text())
                result["final"] = {
                    k: final.get(k) for k in ("fid", "kid", "kid_std", "swd", "n_fake", "n_real")
                }
    return result


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


def print_table(results: list[dict[str, Any]]) -> None:
    head = f"{'images':>7} {'train s':>8} {'FID':>7} {'KID':>7} {'SWD':>7} {'n':>5}"
    print(f"{'preset':<14} {'px':>3} {'batch':>5} {head}")

    def num(f: dict[str, Any], key: str, digits: int) -> str:
        v = f.get(key)
        return f"{v:7.{digits}f}" if isinstance(v, (int, float)) else f"{'-':>7}"

    for r in results:
        f = r.get("final", {})

        print(
            f"{r['preset']:<14} {r['size']:>3} {r['batch']:>5} {r['images']:>7} {r['train_seconds']:>8.0f} "
            f"{num(f, 'fid', 1)} {num(f, 'kid', 4)} {num(f, 'swd', 1)} {f.get('n_fake', '-')!s:>5}"
        )
    print("\nheld-out SWD by images seen (eval n per side as in the runs)")
    for r in results:
        curve = "  ".join(f"{p['images']}: {p['swd']:.1f} ({p['wall_time']:.0f} s)" for p in r["curve"])
        print(f"{r['preset']:<14} {curve}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=16000, help="images seen per preset")
    p.add_argument(
        "--presets",
        nargs="+",
        default=["seed", "default", "modern"],
        help="preset names, or variants 'NAME=PRESET ARGS' (e.g. 'modern-b16=modern --batch-size 16')",
    )
    p.add_argument("--points", type=int, default=4, help="held-out SWD evaluations per run")
    p.add_argument("--eval-n", type=int, default=500, help="faces per side for the SWD curve")
    p.add_argument("--n", type=int, default=500, help="faces per side for the final FID/KID/SWD")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--limit", type=int)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.data = args.data.resolve()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda preset: train(preset, args), args.presets))
    (args.out / "study.json").write_text(json.dumps(results, indent=2) + "\n")
    side_by_side(results, args.out / "side_by_side.png")
    print(f"data {args.data}, held out {args.holdout:.0%}, {args.size} px, {args.images} images per preset")
    print_table(results)
    return 0 if all(r["train_exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
