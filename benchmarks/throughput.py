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
import fnmatch
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "seed_dcgan.py"

# Benchmark the checkout this file lives in (installed or not); the children get the same PYTHONPATH.
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from animegen.config import Config, build_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import train_flops  # noqa: E402

REFERENCE_BATCH = 8  # the tutorial's batch size; the reference runs with it


@dataclass(frozen=True)
class BenchConfig:
    """One row of the table: a preset plus command-line changes (preset None = the reference)."""

    name: str
    preset: str | None
    args: tuple[str, ...] = ()
    note: str = ""
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the child process


CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("reference", None, note="tutorial trainer, batch 8"),
    BenchConfig("seed", "seed", note="same math as the reference"),
    BenchConfig("seed/channels_last", "seed", ("--set", "train.channels_last=true")),
    BenchConfig("seed/amp=bf16", "seed", ("--amp", "bf16")),
    BenchConfig("default", "default", note="batch 64, channels_last, amp auto (bf16 on native-bf16 CPUs)"),
    BenchConfig("default/amp=bf16", "default", ("--amp", "bf16")),
    BenchConfig("default/amp=off", "default", ("--amp", "off")),
    BenchConfig("default/compile", "default", ("--compile", "default")),
    # torch.compile failed on an H200 under channels_last (an inductor stride assertion in G's first
    # transposed convolution); these rows try it with the models left in the default memory format.
    BenchConfig(
        "default/compile+contiguous",
        "default",
        ("--compile", "default", "--set", "train.channels_last=false"),
    ),
    # Inductor's own channels_last choice on CUDA trips stride checks in convolution backward
    # (pytorch/pytorch#171622): this row keeps every layout as eager mode has it.
    BenchConfig(
        "default/compile+no-layout-opt",
        "default",
        ("--compile", "default"),
        env=(("TORCHINDUCTOR_LAYOUT_OPTIMIZATION", "0"),),
    ),
    # On CUDA the default preset replays the whole step (both optimisers too) as one CUDA graph
    # and lets cuDNN time its algorithms; these rows take one or both away. Elsewhere both are off,
    # and default/cuda_graph (forced on) runs the graphed path's plumbing eagerly.
    BenchConfig(
        "default/eager", "default", ("--set", "train.cuda_graph=off", "--set", "train.cudnn_benchmark=off")
    ),
    BenchConfig("default/cuda_graph=off", "default", ("--set", "train.cuda_graph=off")),
    BenchConfig("default/cudnn_benchmark=off", "default", ("--set", "train.cudnn_benchmark=off")),
    BenchConfig("default/cuda_graph", "default", ("--set", "train.cuda_graph=on")),
    BenchConfig("seed/cuda_graph", "seed", ("--set", "train.cuda_graph=on")),
    BenchConfig("seed/cudnn_benchmark", "seed", ("--set", "train.cudnn_benchmark=on")),
    BenchConfig("seed/fused_adam=on", "seed", ("--set", "train.fused_adam=on")),
    BenchConfig("default/fused_adam=off", "default", ("--set", "train.fused_adam=off")),
    # G's wide transposed convs over 4x4 inputs with oneDNN's own gradient kernels (bf16; and fp32
    # where PyTorch runs AVX2 kernels), and the seed networks with the products (off in that preset).
    BenchConfig("default/matmul_deconv_grads=off", "default", ("--set", "train.matmul_deconv_grads=false")),
    BenchConfig(
        "default/amp=off+matmul_deconv_grads=off",
        "default",
        ("--amp", "off", "--set", "train.matmul_deconv_grads=false"),
    ),
    BenchConfig(
        "seed/amp=bf16+matmul_deconv_grads=on",
        "seed",
        ("--amp", "bf16", "--set", "train.matmul_deconv_grads=true"),
    ),
    # pytorch/examples' 64 px networks at batch 128: their 512 -> 256 layer over 4x4 qualifies too.
    BenchConfig("dcgan64", "dcgan64", note="64 px, batch 128, fp32"),
    BenchConfig("dcgan64/amp=bf16", "dcgan64", ("--amp", "bf16")),
    BenchConfig(
        "dcgan64/amp=bf16+matmul_deconv_grads=off",
        "dcgan64",
        ("--amp", "bf16", "--set", "train.matmul_deconv_grads=false"),
    ),
    BenchConfig("seed/reuse_memory=off", "seed", ("--set", "train.reuse_memory=false")),
    BenchConfig("default/reuse_memory=off", "default", ("--set", "train.reuse_memory=false")),
    BenchConfig("default/channels_last=false", "default", ("--set", "train.channels_last=false")),
    BenchConfig("default/threads=1", "default", ("--set", "train.threads=1")),
    BenchConfig("default/threads=2", "default", ("--set", "train.threads=2")),
    BenchConfig("default/batch=8", "default", ("--batch-size", "8")),
    BenchConfig("default/batch=32", "default", ("--batch-size", "32")),
    BenchConfig("default/batch=128", "default", ("--batch-size", "128")),
    BenchConfig("default/batch=256", "default", ("--batch-size", "256")),
)
QUICK_CONFIGS = ("reference", "seed")


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


# ---- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware; without it bf16 matmuls are emulated, far slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def load1() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine_info(device: torch.device, default_threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "torch_threads_default": default_threads,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---- the matmul peak -----------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_dtype(cfg: Config, device: torch.device) -> str:
    """What the convolutions compute in: bf16 under autocast; on a GPU, fp32 convolutions run as
    TF32 (cuDNN's default, torch.backends.cudnn.allow_tf32), so their peak is the TF32 one."""
    from animegen.training.device import SpeedPlan

    if SpeedPlan.resolve(cfg.train, cfg.optim, device).amp == "bf16":
        return "bf16"
    return "tf32" if device.type == "cuda" else "fp32"


def _gemm_routes(device: torch.device, dtype: torch.dtype, n: int) -> dict[str, Callable[[], object]]:
    """Ways to run one n x n x n matrix product (2 n^3 FLOPs) on `device`.

    On a CPU, torch.mm goes to MKL's sgemm, which on some AMD CPUs runs at under half the speed of
    the oneDNN kernels the convolutions use (measured on a 2-core AMD EPYC with AVX-512: mm 214
    GFLOP/s fp32, a 4x4 convolution 482), so an mm-only peak let MFU pass 100%. A 1x1 convolution
    over n channels_last pixels is the same product through oneDNN; spread over 16 images, as a
    training batch is, since oneDNN ran it at 455-478 GFLOP/s fp32 so and at 280-296 as one image.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    routes: dict[str, Callable[[], object]] = {"mm": lambda: torch.mm(a, b)}
    if device.type == "cpu":
        x = a.t().reshape(n, 16, 8, n // 128).transpose(0, 1).contiguous(memory_format=torch.channels_last)
        w = b.reshape(n, n, 1, 1)
        routes["conv1x1"] = lambda: torch.nn.functional.conv2d(x, w)
    return routes


def matmul_peak(device: torch.device, dtype_name: str, threads: int, budget_s: float = 3.0) -> float:
    """Best FLOP/s of an n x n x n matrix product on `device` in `dtype` with `threads` CPU threads,
    over every route of `_gemm_routes` (torch.mm; on a CPU also oneDNN's 1x1 convolution).

    The size grows from 256 while one product takes under a tenth of the budget (up to 2048 on a
    CPU, 8192 on a GPU): a CPU without native bf16 runs bf16 matmuls ~100x slower than fp32, and a
    fixed 2048 x 2048 product would then take most of a minute.
    """
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    previous = torch.get_num_threads()
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
    try:
        limit = 8192 if device.type == "cuda" else 2048
        n = 256
        while True:
            probe = _gemm_routes(device, dtype, n)["mm"]
            probe()  # first call: library init and kernel selection, not timed
            _sync(device)
            t = time.perf_counter()
            probe()
            _sync(device)
            once = time.perf_counter() - t
            if once > budget_s / 10 or n >= limit:
                break
            n *= 2
        best = 0.0
        with torch.no_grad():
            for run in _gemm_routes(device, dtype, n).values():
                run()
                _sync(device)
                deadline = time.perf_counter() + budget_s
                reps = 0
                while reps < 3 or time.perf_counter() < deadline:
                    t = time.perf_counter()
                    run()
                    _sync(device)
                    best = max(best, 2 * n**3 / (time.perf_counter() - t))
                    reps += 1
        return best
    finally:
        torch.set_num_threads(previous)
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def format_peaks(peaks: dict[tuple[str, int], float]) -> str:
    return ", ".join(f"{d} x{th} threads {p / 1e9:.1f} GFLOP/s" for (d, th), p in sorted(peaks.items()))


# ---- running one configuration -------------------------------------------------------------------


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


# the flags CONFIGS use
FLAG_KEYS = {"--amp": "train.amp", "--batch-size": "train.batch_size", "--compile": "train.compile"}


def resolve(bc: BenchConfig, args: argparse.Namespace) -> Config:
    """The animegen config a row trains with, resolved the way the CLI resolves it."""
    pairs = list(zip(bc.args[::2], bc.args[1::2], strict=True))
    overrides: dict[str, Any] = {FLAG_KEYS[f]: v for f, v in pairs if f in FLAG_KEYS}
    overrides["data.path"] = str(args.data)
    overrides["data.limit"] = args.limit
    overrides["data.cache_dir"] = str(args.cache_dir) if args.cache_dir else None
    return build_config(bc.preset or "seed", sets=[v for f, v in pairs if f == "--set"], overrides=overrides)


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


# ---- profile mode --------------------------------------------------------------------------------


def profile(bc: BenchConfig, args: argparse.Namespace, device: torch.device) -> int:
    """torch.profiler over a few steps of one configuration, in this process; prints the top-15 ops
    (with --by-shape, each op split by its input shapes, which tells the layers apart)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from animegen.data.batches import BatchFeeder
    from animegen.training.graphed import GraphedStep
    from animegen.training.run import build_run, load_images
    from animegen.training.step import train_step

    cfg = resolve(bc, args)
    t = cfg.train
    # The trainer's own setup (process settings, seeded networks, layout, optimisers), so the
    # profiled step is the one it runs.
    run = build_run(cfg, device)
    netG, netD, optG, optD, loss = run.netG, run.netD, run.optG, run.optD, run.loss
    channels_last, graphed = run.speed.channels_last, run.speed.cuda_graph

    def plain(real: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return train_step(netG, netD, optG, optD, real, noise, loss, t.amp)

    run_step = GraphedStep(plain, device) if graphed else plain
    images = load_images(cfg)
    feeder = BatchFeeder(
        images.images, t.batch_size, device, seed=t.seed, hflip=cfg.data.hflip, channels_last=channels_last
    )
    batches = feeder.epoch(0)

    def step() -> None:
        with record_function("## batch (BatchFeeder)"):
            real = next(batches)
        with record_function("## noise"):
            noise = torch.randn(t.batch_size, cfg.model.z_dim, 1, 1, device=device)
            if channels_last:
                noise = noise.contiguous(memory_format=torch.channels_last)
        with record_function("## train_step"):
            run_step(real, noise)

    # A graphed step is captured after its eager warm-up: keep both out of the profile.
    warmup = max(args.warmup, run_step.warmup + 2) if isinstance(run_step, GraphedStep) else args.warmup
    steps = min(args.profile_steps, len(feeder) - warmup)
    if steps < 1:
        raise SystemExit(
            f"throughput.py: {len(feeder)} batches per epoch leave no step to profile (raise --limit)"
        )
    for _ in range(warmup):
        step()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with torch_profile(activities=activities, record_shapes=args.by_shape) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    seconds = time.perf_counter() - start
    ips = steps * t.batch_size / seconds
    print(
        f"profiled {steps} steps of {bc.name} (batch {t.batch_size}, amp {t.amp}, "
        f"channels_last {channels_last}, threads {torch.get_num_threads()}) on {device}: "
        f"{seconds / steps * 1000:.1f} ms/step, {ips:.2f} images/s under the profiler"
    )
    averages = prof.key_averages(group_by_input_shape=args.by_shape)
    if device.type == "cuda":
        print(device_summary(averages, steps, seconds))
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    widths = {"max_name_column_width": 32, "max_shapes_column_width": 80} if args.by_shape else {}
    print(averages.table(sort_by=sort, row_limit=25 if args.by_shape else 15, **widths))
    return 0


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
# Calls that make the host wait for the GPU; the profile's closing synchronize is one of them.
HOST_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def device_summary(averages: Any, steps: int, seconds: float) -> str:
    """Per step: wall time, time the GPU spent in kernels, launches, and the host's waits for the
    GPU over all steps (the profile ends with one), so a host-bound or synchronising step shows."""
    # Annotated ranges (record_function, Optimizer.step) span kernels on the GPU's timeline too;
    # counting them as well put the graphed step at 7.4 ms of kernels in a 3.7 ms step (H200).
    kernels = [e for e in averages if not (getattr(e, "is_user_annotation", False) or e.key[:3] == "## ")]
    busy_us = sum(getattr(e, "self_device_time_total", 0.0) for e in kernels)
    launches = sum(e.count for e in averages if e.key in LAUNCHES)
    graphs = sum(e.count for e in averages if e.key == "cudaGraphLaunch")
    waits = sum(e.count for e in averages if e.key in HOST_WAITS)
    wall_ms = seconds / steps * 1000
    busy_ms = busy_us / steps / 1000
    return (
        f"per step: {wall_ms:.2f} ms wall, {busy_ms:.2f} ms of GPU kernels ({busy_ms / wall_ms:.0%} busy), "
        f"{launches / steps:.0f} kernel launches, {graphs / steps:.0f} graph launches; "
        f"{waits} host waits for the GPU in {steps} steps (the closing synchronize included)"
    )


# ---- main ----------------------------------------------------------------------------------------


def pick_configs(patterns: list[str]) -> list[BenchConfig]:
    chosen: list[BenchConfig] = []
    for pattern in patterns:
        for item in pattern.split(","):
            hits = [c for c in CONFIGS if fnmatch.fnmatchcase(c.name, item.strip())]
            if not hits:
                names = ", ".join(c.name for c in CONFIGS)
                raise SystemExit(f"throughput.py: no config matches {item!r} (configs: {names})")
            chosen += [c for c in hits if c not in chosen]
    return chosen


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
