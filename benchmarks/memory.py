"""Resident memory across epochs: train for a few epochs and print the RSS logged at each epoch end.

  python benchmarks/memory.py --data DIR [--preset default] [--limit 512] [--epochs 4]

The trainer writes its current RSS into every log.jsonl row (`rss_mb`); this prints the last row
of each epoch and the process's peak (ru_maxrss of the child), so growth across epochs shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--preset", default="default")
    p.add_argument("--limit", type=int, default=512)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `animegen train` arguments")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="animegen-mem-") as tmp:
        run = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "animegen", "train", "--data", str(args.data), "--preset", args.preset,
            "--limit", str(args.limit), "--epochs", str(args.epochs), "--run-dir", str(run), "--quiet",
            "--cache-dir", str(args.cache_dir or Path(tmp) / "cache"), *args.extra,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        proc = subprocess.Popen(cmd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"training failed: {' '.join(cmd)}")
            return 1
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]
        by_epoch: dict[int, dict] = {}
        for r in rows:
            if "rss_mb" in r:
                by_epoch[r["epoch"]] = r
        print(f"{args.preset} preset, {args.limit} images, {args.epochs} epochs")
        print(f"{'epoch':>5} {'iteration':>9} {'RSS MB':>8}")
        for epoch, r in sorted(by_epoch.items()):
            print(f"{epoch:>5} {r['iteration']:>9} {r['rss_mb']:>8.1f}")
        values = [r["rss_mb"] for _, r in sorted(by_epoch.items())]
        if len(values) >= 2:
            print(f"growth from epoch 2 to the last: {values[-1] - values[1]:+.1f} MB")
        print(f"peak RSS of the training process: {usage.ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
