"""Measure training throughput (images/s), peak memory and MFU of animegen against the tutorial trainer.

One run, one machine, one image folder, every configuration timed the same way:

  reference             python <shared>/reference/seed_dcgan.py --bench (the tutorial, batch 8); its own
                        "seed-reference images/s" line, with the same warm-up left out
  seed                  animegen train --preset seed (batch 8): the same math as the reference
  default               animegen train --preset default (batch 64, channels_last on, amp auto, hflip)
  default/<option>      the default preset with one speed option changed: --amp bf16,
                        train.channels_last=false, train.threads=1 or 2, batch 8 / 32 / 128

Each animegen configuration runs as its own process, `python -m animegen train ... --max-steps W+N
--set train.log_every=1`, sharing one decoded-image cache that is filled before the first timing.
images/s comes from the run's log.jsonl rows (iteration, wall_time): the iterations and seconds
between the row at/after warm-up iteration W and the last row, times the batch size. So process
start, the first-pass decode, model building and warm-up are all left out; steps that cross an
epoch end are left out as well, since they include writing the epoch's samples and checkpoint.
(log_every=1 reads the losses back every step; on a GPU that is one host sync per step, which is
part of what is timed; --log-every changes it.)

Peak RSS of each child comes from os.wait4(), which returns that one child's rusage (ru_maxrss);
getrusage(RUSAGE_CHILDREN) only gives the largest over all children so far.

MFU = images/s x training FLOPs per image / measured matmul peak. The FLOPs come from the layer
shapes of G and D (benchmarks/flops.py documents the count: 8 F_D + 3 F_G per image). The peak is
the best timed matrix product in this run (torch.mm, and on a CPU the same product as a oneDNN 1x1
convolution), on the same device, in the dtype the configuration computes in (fp32, or bf16 where
--amp resolves to it), with the configuration's CPU thread count.

Usage:
  python benchmarks/throughput.py --data DIR [--iters N] [--warmup W] [--device auto|cpu|cuda]
                                  [--configs NAME ...] [--limit N] [--json out.json]
  python benchmarks/throughput.py --data DIR --quick               # smoke run: reference + seed, 3 steps
  python benchmarks/throughput.py --data DIR --profile seed        # torch.profiler top-15 ops, in-process
  python benchmarks/throughput.py --data DIR --profile default --by-shape   # the same, per layer shape

On a CPU shared with other work the figures move a lot (two OpenMP threads that contend with
another process can run many times slower), so the header and every row show the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "seed_dcgan.py"

# Benchmark the checkout this file lives in (installed or not); the children get the same PYTHONPATH.
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from flops import train_flops  # noqa: E402
from throughput_machine import (  # noqa: E402
    compute_dtype,
    format_peaks,
    load1,
    machine_info,
    matmul_peak,
)
from throughput_profile import profile  # noqa: E402
from throughput_rows import CONFIGS, QUICK_CONFIGS, REFERENCE_BATCH, BenchConfig, pick_configs, resolve  # noqa: E402
from throughput_runs import Result, median_result, run_animegen, run_reference  # noqa: E402

from animegen.config import Config  # noqa: E402
from animegen.training.step import cpu_has_native_bf16  # noqa: E402

# ---- the table -----------------------------------------------------------------------------------


def fmt(value: float | None, width: int, digits: int, suffix: str = "") -> str:
    if value is None or math.isnan(value):
        return "-".rjust(width + len(suffix))
    return f"{value:{width}.{digits}f}{suffix}"


# Wide enough for every row's name and a round's " #N".
NAME_WIDTH = max(len(c.name) for c in CONFIGS) + 3


def print_header_row() -> None:
    print(
        f"{'config':<{NAME_WIDTH}} {'batch':>5} {'dtype':>5} {'thr':>3} {'images/s':>9} {'x ref':>6} "
        f"{'ms/step':>8} {'RSS MB':>7} {'MFU':>6} {'load1':>5} {'spread':>6} {'warm-up s':>9}"
    )


def print_row(r: Result) -> None:
    ms = r.batch / r.images_per_s * 1000 if r.images_per_s else None
    mfu = None if r.mfu is None else r.mfu * 100
    print(
        f"{r.name:<{NAME_WIDTH}} {r.batch:>5} {r.dtype:>5} {r.threads:>3} {fmt(r.images_per_s, 9, 2)} "
        f"{fmt(r.ratio_to_reference, 6, 2)} {fmt(ms, 8, 1)} {fmt(r.peak_rss_mb, 7, 0)} "
        f"{fmt(mfu, 5, 1, '%')} {fmt(r.load_before, 5, 2)} "
        f"{fmt(None if r.spread is None else r.spread * 100, 5, 1, '%')} {fmt(r.warmup_s, 9, 1)}"
    )
    if r.error:
        print(f"    failed: {r.error}")


# ---- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="configs: " + ", ".join(c.name for c in CONFIGS) + " (shell patterns work: 'default/*')",
    )
    p.add_argument(
        "--data", required=True, type=Path, metavar="DIR", help="image folder, used by every config"
    )
    p.add_argument("--iters", type=int, default=20, help="timed iterations per config")
    p.add_argument("--warmup", type=int, default=3, help="iterations left out of the figure")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--configs", nargs="+", metavar="NAME", help="which rows (default: all; --quick: reference seed)"
    )
    p.add_argument(
        "--limit", type=int, metavar="N", help="animegen --limit: the first N images (short decode)"
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every figure as JSON")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="the tutorial trainer")
    p.add_argument("--cache-dir", type=Path, help="decoded-image cache to share (default: a temporary one)")
    p.add_argument("--workdir", type=Path, help="keep run dirs and child logs here (default: temporary)")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all configs; the median is reported")
    p.add_argument("--log-every", type=int, default=1, help="animegen train.log_every for the timed runs")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a config is killed")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 timed steps after 1 warm-up")
    p.add_argument("--profile", metavar="CONFIG", help="profile this config in-process instead")
    p.add_argument("--profile-steps", type=int, default=5, help="steps under the profiler")
    p.add_argument("--by-shape", action="store_true", help="--profile: split each op by input shapes")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.warmup = min(args.iters, 3), min(args.warmup, 1)
        args.configs = args.configs or list(QUICK_CONFIGS)
    if args.iters < 1 or args.warmup < 1 or args.repeat < 1:
        p.error(
            "--iters, --warmup and --repeat must be at least 1 (warm-up leaves the first step's setup out)"
        )
    if args.log_every < 1 or args.log_every > args.iters:
        # The figure is read from log rows inside the timed steps: it needs two of them.
        p.error(f"--log-every {args.log_every} must be between 1 and --iters ({args.iters})")
    if not args.data.is_dir():
        p.error(f"--data {args.data}: not a folder")
    args.data = args.data.resolve()  # the children run in their own directories
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from animegen.device import resolve_device
    from animegen.errors import UserError
    from animegen.training.run import load_images

    try:
        device = resolve_device(args.device)
    except UserError as e:
        raise SystemExit(f"throughput.py: {e}") from None
    default_threads = torch.get_num_threads()
    configs = pick_configs(args.configs or [c.name for c in CONFIGS])
    if args.profile:
        (bc,) = pick_configs([args.profile])
        if bc.preset is None:
            raise SystemExit("throughput.py: --profile takes an animegen config, not the reference")
        work = Path(tempfile.mkdtemp(prefix="animegen-profile-"))
        args.cache_dir = args.cache_dir or work / "cache"
        try:
            return profile(bc, args, device)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    info = machine_info(device, default_threads)
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, device {device}"
        + (f" ({info['gpu']})" if "gpu" in info else "")
        + f", torch threads {default_threads}"
    )
    la = info["loadavg"] or [float("nan")] * 3
    print(f"load average: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min) on {info['cores']} cores")
    print(
        f"data: {args.data}"
        + (f" (first {args.limit} images)" if args.limit else "")
        + f"; {args.warmup} warm-up + {args.iters} timed iterations per config"
    )

    keep = args.workdir is not None
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="animegen-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.cache_dir = (args.cache_dir or work / "cache").resolve()
    args.reference = args.reference.resolve()
    try:
        rows: list[tuple[BenchConfig, Config]] = [(bc, resolve(bc, args)) for bc in configs]
        if any(bc.preset is None for bc, _ in rows) and not args.reference.is_file():
            print(f"reference not found at {args.reference} (--reference PATH): leaving it out")
            rows = [(bc, cfg) for bc, cfg in rows if bc.preset is not None]

        # The peak each row is measured against: (dtype, threads) as that row computes.
        keys = {(compute_dtype(cfg, device), cfg.train.threads or default_threads) for _, cfg in rows}
        peaks = {key: matmul_peak(device, *key) for key in sorted(keys)}
        if device.type == "cpu" and any(d == "bf16" for d, _ in peaks) and not cpu_has_native_bf16():
            print(
                "note: this CPU has no avx512_bf16/amx_bf16: bf16 is emulated, expect --amp bf16 to be slow"
            )
        print("matmul peak: " + format_peaks(peaks))

        if any(bc.preset is not None for bc, _ in rows):
            # Fill the shared cache once, so no child's peak RSS or start-up includes the decode.
            t = time.perf_counter()
            images = load_images(next(cfg for bc, cfg in rows if bc.preset is not None))
            print(f"decoded-image cache: {len(images)} images, ready in {time.perf_counter() - t:.1f} s")
            del images
        print()
        print_header_row()

        # Rounds go through every row in turn, so slow drifts in machine load hit all rows alike.
        rounds: dict[str, list[Result]] = {bc.name: [] for bc, _ in rows}
        for i in range(args.repeat):
            for bc, cfg in rows:
                dtype = compute_dtype(cfg, device)
                threads = cfg.train.threads or default_threads
                batch = REFERENCE_BATCH if bc.preset is None else cfg.train.batch_size
                r = Result(bc.name, batch, dtype, threads, load_before=load1())
                r.flops_per_image = train_flops(cfg.model).per_image
                if bc.preset is None:
                    run_reference(bc, args, work, device, r)
                else:
                    run_animegen(bc, cfg, args, work, device, r)
                if r.images_per_s:
                    r.mfu = r.images_per_s * r.flops_per_image / peaks[(dtype, threads)]
                rounds[bc.name].append(r)
                if args.repeat > 1:
                    r.name = f"{bc.name} #{i + 1}"
                print_row(r)
                r.name = bc.name
        # A shared machine can slow one probe (fp32 probes here ranged 228-337 GFLOP/s across runs),
        # which would put MFU above 100%: probe again after the rows and keep each higher figure.
        first = dict(peaks)
        peaks = {key: max(p, matmul_peak(device, *key)) for key, p in peaks.items()}
        print(f"matmul peak after the rows: {format_peaks(peaks)} (MFU below uses the higher of the two)")
        for bc, cfg in rows:
            key = (compute_dtype(cfg, device), cfg.train.threads or default_threads)
            for r in rounds[bc.name]:
                if r.images_per_s:
                    r.mfu = r.images_per_s * r.flops_per_image / peaks[key]
        results = [median_result(rounds[bc.name]) for bc, _ in rows]

        ref = next((r for r in results if r.name == "reference" and r.images_per_s), None)
        if ref:
            for r in results:
                if r.images_per_s:
                    r.ratio_to_reference = r.images_per_s / ref.images_per_s
        la_end = os.getloadavg()
        print()
        print(f"results (load average at the end: {la_end[0]:.2f} {la_end[1]:.2f} {la_end[2]:.2f})")
        print_header_row()
        for r in results:
            print_row(r)
        if args.json:
            payload = {
                "machine": info,
                "loadavg_end": list(la_end),
                "settings": {
                    "data": str(args.data),
                    "limit": args.limit,
                    "warmup": args.warmup,
                    "iters": args.iters,
                    "log_every": args.log_every,
                    "repeat": args.repeat,
                },
                "matmul_peak_flops": {f"{d}/threads={th}": p for (d, th), p in peaks.items()},
                "matmul_peak_flops_first_probe": {f"{d}/threads={th}": p for (d, th), p in first.items()},
                "results": [asdict(r) for r in results],
            }
            args.json.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0 if all(r.error is None for r in results) else 1
    finally:
        if keep:
            print(f"run dirs and child logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
