"""Running one row of benchmarks/throughput.py as its own process, and reading its figure back."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from throughput_rows import REFERENCE_BATCH, BenchConfig

from animegen.config import Config

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    """What one configuration measured; images_per_s is None when the run failed."""

    name: str
    batch: int
    dtype: str
    threads: int
    images_per_s: float | None = None
    warmup_s: float | None = None  # from the run's start to the first timed step: includes compiling
    timed_steps: int = 0
    skipped_epoch_ends: int = 0
    peak_rss_mb: float | None = None
    flops_per_image: int = 0
    mfu: float | None = None
    ratio_to_reference: float | None = None
    load_before: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    command: list[str] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)  # images/s of every round (--repeat)

    @property
    def spread(self) -> float | None:
        """Half the min-max range of the rounds, relative to the reported figure."""
        if len(self.runs) < 2 or not self.images_per_s:
            return None
        return (max(self.runs) - min(self.runs)) / 2 / self.images_per_s


def median_result(rounds: list[Result]) -> Result:
    """The round with the median images/s (the lower middle one), carrying every round's figure."""
    ok = sorted((r for r in rounds if r.images_per_s), key=lambda r: r.images_per_s or 0.0)
    chosen = ok[(len(ok) - 1) // 2] if ok else rounds[-1]
    chosen.runs = [r.images_per_s for r in ok if r.images_per_s]
    chosen.peak_rss_mb = max((r.peak_rss_mb for r in rounds if r.peak_rss_mb), default=None)
    return chosen


def run_child(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float, float]:
    """Run `cmd` with output to `log`; (exit code, peak RSS in MB, seconds). Kills it after `timeout`."""
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                with open(log, "a") as out_text:
                    out_text.write(f"\nkilled by throughput.py after --timeout {timeout:.0f} s\n")
                break
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return proc.returncode, usage.ru_maxrss / 1024, time.perf_counter() - start  # ru_maxrss is KiB


def log_throughput(rows: list[dict[str, Any]], warmup: int, batch: int) -> tuple[float, int, int]:
    """(images/s, timed steps, skipped epoch-end gaps) from log.jsonl rows after `warmup` iterations."""
    rows = [r for r in rows if r["iteration"] >= warmup and "loss_D" in r]
    steps, seconds, skipped = 0, 0.0, 0
    for a, b in zip(rows, rows[1:], strict=False):
        if a["epoch"] != b["epoch"]:  # this gap holds the epoch's sample grid and checkpoint
            skipped += 1
            continue
        steps += b["iteration"] - a["iteration"]
        seconds += b["wall_time"] - a["wall_time"]
    if steps == 0 or seconds <= 0:
        raise ValueError(f"no timed steps after warm-up ({len(rows)} log rows at/after iteration {warmup})")
    return steps * batch / seconds, steps, skipped


def tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def child_env(hide_gpus: bool) -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_reference(
    bc: BenchConfig, args: argparse.Namespace, work: Path, device: torch.device, result: Result
) -> None:
    out_dir = work / "reference"
    out_dir.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        str(args.reference),
        "--data",
        str(args.data),
        "--bench",
        "--max-iters",
        str(args.warmup + args.iters),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(REFERENCE_BATCH),
        "--out",
        str(out_dir / "imgs"),
    ]
    result.command = cmd
    # The reference takes CUDA whenever it sees it: hide the GPU for a CPU comparison.
    log = out_dir / "output.txt"
    code, rss, seconds = run_child(cmd, child_env(hide_gpus=device.type != "cuda"), log, args.timeout)
    result.peak_rss_mb, result.seconds = rss, seconds
    m = re.search(r"seed-reference images/s: ([0-9.]+)", log.read_text(errors="replace"))
    if code != 0 or not m:
        result.error = f"exit {code}: {tail(log)}"
        return
    result.images_per_s = float(m.group(1))
    result.timed_steps = args.iters


def run_animegen(
    bc: BenchConfig, cfg: Config, args: argparse.Namespace, work: Path, device: torch.device, result: Result
) -> None:
    run_dir = work / bc.name.replace("/", "_").replace("=", "-")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "animegen",
        "train",
        "--data",
        str(args.data),
        "--preset",
        str(bc.preset),
        *bc.args,
        "--device",
        str(device),
        "--epochs",
        "100000",  # --max-steps decides when to stop
        "--max-steps",
        str(args.warmup + args.iters),
        "--run-dir",
        str(run_dir),
        "--quiet",
        "--cache-dir",
        str(args.cache_dir),
        "--set",
        f"train.log_every={args.log_every}",
    ]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    result.command = cmd
    log = work / f"{run_dir.name}.txt"
    env = {**child_env(hide_gpus=False), **dict(bc.env)}
    code, rss, seconds = run_child(cmd, env, log, args.timeout)
    result.peak_rss_mb, result.seconds = rss, seconds
    if code != 0:
        result.error = f"exit {code}: {tail(log)}"
        return
    try:
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line]
        result.images_per_s, result.timed_steps, result.skipped_epoch_ends = log_throughput(
            rows, args.warmup, cfg.train.batch_size
        )
        result.warmup_s = next(
            r["wall_time"] for r in rows if r["iteration"] >= args.warmup and "loss_D" in r
        )
    except (OSError, ValueError, KeyError) as e:
        result.error = f"{type(e).__name__}: {e}"
