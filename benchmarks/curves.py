"""Print the held-out evaluation curves and late-training losses of finished runs, side by side.

  python benchmarks/curves.py RUN_DIR [RUN_DIR ...]        # one table per metric, plus losses
  python benchmarks/curves.py --pick RUN_DIR RUN_DIR ...   # print the run name with the best final score

Reads each run's log.jsonl: the evaluation rows (`"kind": "eval"`, written by --eval-every) and
the training rows. "late losses" are the means over the last fifth of the training rows, which
is what a quality guard compares between two runs at the same steps (benchmarks/gpu.sh).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from animegen.runlog import read_log  # noqa: E402

METRICS = ("fid", "kid", "swd")


def evals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind") == "eval"]


def late_losses(rows: list[dict[str, Any]]) -> dict[str, float]:
    train = [r for r in rows if "loss_D" in r]
    tail = train[-max(1, len(train) // 5) :] if train else []
    out = {}
    for key in ("loss_D", "loss_G", "D_x", "D_G_z", "images_per_s"):
        values = [r[key] for r in tail if isinstance(r.get(key), (int, float))]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def final_score(rows: list[dict[str, Any]]) -> tuple[str, float]:
    """(metric, value) of the last evaluation: FID when measured, else SWD; nan when none."""
    last = evals(rows)[-1] if evals(rows) else {}
    for m in ("fid", "swd"):
        if isinstance(last.get(m), (int, float)):
            return m, float(last[m])
    return "", math.nan


def print_tables(runs: list[Path]) -> None:
    data = {run: read_log(run / "log.jsonl") for run in runs}
    width = max(len(r.name) for r in runs)
    for metric in METRICS:
        points = sorted({e["iteration"] for rows in data.values() for e in evals(rows) if metric in e})
        if not points:
            continue
        print(f"held-out {metric} by iteration (n per side in the last column)")
        print(f"{'run':<{width}} " + " ".join(f"{p:>8}" for p in points) + f" {'n':>6}")
        for run, rows in data.items():
            by_it = {e["iteration"]: e for e in evals(rows) if metric in e}
            cells = [f"{by_it[p][metric]:8.2f}" if p in by_it else f"{'-':>8}" for p in points]
            n = next((e.get("n_fake") for e in reversed(evals(rows)) if metric in e), "-")
            print(f"{run.name:<{width}} " + " ".join(cells) + f" {n!s:>6}")
        print()
    print("late losses (mean over the last fifth of the logged steps)")
    head = f"{'steps':>6} {'loss_D':>7} {'loss_G':>7} {'D(x)':>6} {'D(G(z))':>7} {'img/s':>8}"
    print(f"{'run':<{width}} {head}")
    for run, rows in data.items():
        train = [r for r in rows if "loss_D" in r]
        steps = train[-1]["iteration"] if train else 0
        lt = late_losses(rows)
        print(
            f"{run.name:<{width}} {steps:>6} {lt['loss_D']:7.3f} {lt['loss_G']:7.3f} {lt['D_x']:6.3f} "
            f"{lt['D_G_z']:7.3f} {lt['images_per_s']:8.0f}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--pick", action="store_true", help="print the name of the run with the best final score")
    args = p.parse_args(argv)
    if args.pick:
        scored = [(final_score(read_log(r / "log.jsonl"))[1], r.name) for r in args.runs]
        finite = [s for s in scored if math.isfinite(s[0])]
        print(min(finite)[1] if finite else args.runs[0].name)
        return 0
    print_tables(args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
