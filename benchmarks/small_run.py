"""A small run's whole process against the tutorial trainer: 2 epochs over 800 faces, start to exit.

  python benchmarks/small_run.py --data DIR [--faces 800] [--epochs 2] [--rounds 3]
                                 [--presets seed default] [--baseline-src OTHER/src] [--profile]

Each round runs, as fresh processes one after another: the reference trainer
(../shared/reference/seed_dcgan.py, batch 8, its per-epoch sample and weight files) and
`animegen train --preset P` for each preset, on the same folder of the first --faces images
(symlinked), with a fresh run dir and a fresh decoded-image cache each time, as a user's first run
on a new folder meets it. It prints each process's wall seconds, the medians over the rounds and
each preset's ratio (reference seconds / animegen seconds: above 1 is faster than the reference).
--baseline-src adds, in every round, each preset run from another checkout's src/ (say, main
before a change), so before and after are measured in the same rounds.

--profile then runs each preset once more under cProfile and prints where its seconds went:
imports, decoding the folder into the cache, building the networks, the training steps, the epoch
sample grids, checkpoints, the loss plot, and the rest. cProfile slows Python-heavy parts, so these
are shares to look at, not timings to compare with the rounds.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "seed_dcgan.py"
EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# (label, function name as cProfile lists it, file ending): the phases a small run's seconds go to.
PHASES = (
    ("decode into the cache", "load_data", "training/run.py"),
    ("build networks and optimisers", "build_run", "training/run.py"),
    ("training steps", "train_step", "training/step.py"),
    ("epoch sample grids", "write_samples", "training/loop.py"),
    ("checkpoints", "save_checkpoint", "training/loop.py"),
    ("loss plot (loss.png)", "plot_losses", "training/monitor.py"),
)


def pick_faces(data: Path, count: int, into: Path) -> Path:
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in EXTS)[:count]
    if len(files) < count:
        raise SystemExit(f"{data}: only {len(files)} images, --faces asks for {count}")
    into.mkdir(parents=True)
    for i, f in enumerate(files):
        (into / f"{i:05d}{f.suffix.lower()}").symlink_to(f.resolve())
    return into


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def animegen_cmd(preset: str, faces: Path, epochs: int, work: Path) -> list[str]:
    run = Path(tempfile.mkdtemp(dir=work, prefix=f"{preset}-"))
    cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
    return [
        sys.executable, "-m", "animegen", "train", "--data", str(faces), "--preset", preset,
        "--epochs", str(epochs), "--run-dir", str(run / "run"), "--cache-dir", str(cache),
        "--device", "cpu", "--quiet",
    ]  # fmt: skip


def profile(preset: str, faces: Path, epochs: int, work: Path) -> None:
    """One run in this process under cProfile; seconds by phase."""
    from animegen.cli import main

    argv = animegen_cmd(preset, faces, epochs, work)[3:]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    code = main(argv)
    prof.disable()
    total = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"animegen {' '.join(argv)} exited {code}")
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    print(f"\n{preset}: {total:.2f} s in main() under cProfile (imports before main() not included)")
    accounted = 0.0
    for label, name, ending in PHASES:
        ct = sum(v[3] for (file, _, fn), v in stats.items() if fn == name and file.endswith(ending))
        accounted += ct
        print(f"  {label:32s} {ct:7.2f} s  {100 * ct / total:5.1f}%")
    print(f"  {'the rest':32s} {total - accounted:7.2f} s  {100 * (total - accounted) / total:5.1f}%")
    top = sorted(stats.items(), key=lambda kv: kv[1][3], reverse=True)
    print("  largest cumulative entries:")
    shown = 0
    for (file, line, fn), v in top:
        if "animegen" in file or "torch/optim" in file or "matplotlib" in file or "imagehash" in file:
            print(f"    {v[3]:7.2f} s  {fn} ({'/'.join(Path(file).parts[-2:])}:{line})")
            shown += 1
        if shown == 15:
            break


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--faces", type=int, default=800)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--presets", nargs="+", default=["seed", "default"])
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    p.add_argument("--baseline-src", type=Path, help="also run each preset from this checkout's src/")
    p.add_argument("--profile", action="store_true", help="then profile each preset once (in-process)")
    args = p.parse_args(argv)
    if not args.reference.exists():
        raise SystemExit(f"{args.reference}: no reference trainer (pass --reference)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    work = Path(tempfile.mkdtemp(prefix="animegen-small-run-"))
    try:
        faces = pick_faces(args.data, args.faces, work / "faces")
        print(f"{args.faces} faces from {args.data}, {args.epochs} epochs, {args.rounds} rounds, "
              f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        arms = [(pr, pr, env) for pr in args.presets]
        if args.baseline_src:
            base_env = {**env, "PYTHONPATH": str(args.baseline_src.resolve())}
            arms += [(f"{pr}@baseline", pr, base_env) for pr in args.presets]
        seconds: dict[str, list[float]] = {"reference": [], **{label: [] for label, _, _ in arms}}
        for r in range(args.rounds):
            out = Path(tempfile.mkdtemp(dir=work, prefix="reference-"))
            ref = [sys.executable, str(args.reference), "--data", str(faces), "--epochs", str(args.epochs),
                   "--out", str(out)]  # fmt: skip
            seconds["reference"].append(timed(ref, env))
            for label, preset, arm_env in arms:
                seconds[label].append(timed(animegen_cmd(preset, faces, args.epochs, work), arm_env))
            row = "  ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items())
            print(f"round {r + 1}: {row}  (load {os.getloadavg()[0]:.2f})", flush=True)
        ref_median = statistics.median(seconds["reference"])
        print(f"\nmedian whole-process seconds; ratio = reference / animegen (reference {ref_median:.2f} s)")
        for label, _, _ in arms:
            med = statistics.median(seconds[label])
            per_round = [a / b for a, b in zip(seconds["reference"], seconds[label], strict=True)]
            print(f"  {label:18s} {med:7.2f} s  x{ref_median / med:.2f}  "
                  f"(per round {', '.join(f'x{x:.2f}' for x in per_round)})")  # fmt: skip
        if args.profile:
            sys.path.insert(0, str(REPO / "src"))
            for preset in args.presets:
                profile(preset, faces, args.epochs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
