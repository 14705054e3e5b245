"""What a checkpoint costs: its size and the seconds to pack and write it, per preset.

The figure behind train.checkpoint_minutes' default: a checkpoint every M minutes costs
write_seconds / (60 M) of the training time, and a kill loses at most M minutes of it.

Each preset is built as `animegen train` builds it (same planning, same trainer) on the given folder,
then Trainer.save_checkpoint() is timed --repeats times: packing G, D, EMA, both Adam states and the
RNG states, the SHA-256, the fsynced write to a temp file and the rename, and the pruning.

Usage:
  python benchmarks/checkpoint_cost.py --data DIR [--presets seed modern ...] [--size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from animegen.training.loop import Trainer
from animegen.training.progress import Reporter
from animegen.training.session import TrainRequest, plan_run


def measure(data: str, preset: str, size: int | None, repeats: int, limit: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"data.path": data, "data.limit": limit, "model.image_size": size}
        req = TrainRequest(preset=preset, overrides=overrides, run_dir=Path(tmp) / "run")
        plan = plan_run(req)
        trainer = Trainer(plan.cfg, plan.run_dir, Reporter(quiet=True), resume_from=None)
        trainer.prepare()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            path = trainer.save_checkpoint()
            seconds.append(time.perf_counter() - start)
        size_mb = path.stat().st_size / 2**20
    return {"size_mb": size_mb, "median_s": statistics.median(seconds), "max_s": max(seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--presets", nargs="+", default=["seed", "default", "modern", "projected"])
    ap.add_argument("--size", type=int, default=None, help="image size (default: each preset's own)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--limit", type=int, default=256, help="images to decode (no effect on the cost)")
    args = ap.parse_args()
    print(f"{'preset':<12} {'size MiB':>9} {'median s':>9} {'max s':>7}  share of 10 min")
    for preset in args.presets:
        r = measure(args.data, preset, args.size, args.repeats, args.limit)
        share = r["median_s"] / 600
        print(f"{preset:<12} {r['size_mb']:>9.1f} {r['median_s']:>9.3f} {r['max_s']:>7.3f}  {share:.3%}")


if __name__ == "__main__":
    main()
