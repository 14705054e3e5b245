"""The machine a throughput run measures: what it is, and the matrix-product peak MFU is taken against."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from animegen.config import Config


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_dtype(cfg: Config, device: torch.device) -> str:
    """What the convolutions compute in: bf16 under autocast; on a GPU, fp32 convolutions run as
    TF32 (cuDNN's default, torch.backends.cudnn.allow_tf32), so their peak is the TF32 one."""
    from animegen.training.speed_plan import SpeedPlan

    if SpeedPlan.resolve(cfg.train, cfg.optim, device).amp == "bf16":
        return "bf16"
    return "tf32" if device.type == "cuda" else "fp32"


def gemm_routes(device: torch.device, dtype: torch.dtype, n: int) -> dict[str, Callable[[], object]]:
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
    over every route of `gemm_routes` (torch.mm; on a CPU also oneDNN's 1x1 convolution).

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
            probe = gemm_routes(device, dtype, n)["mm"]
            probe()  # first call: library init and kernel selection, not timed
            sync(device)
            t = time.perf_counter()
            probe()
            sync(device)
            once = time.perf_counter() - t
            if once > budget_s / 10 or n >= limit:
                break
            n *= 2
        best = 0.0
        with torch.no_grad():
            for run in gemm_routes(device, dtype, n).values():
                run()
                sync(device)
                deadline = time.perf_counter() + budget_s
                reps = 0
                while reps < 3 or time.perf_counter() < deadline:
                    t = time.perf_counter()
                    run()
                    sync(device)
                    best = max(best, 2 * n**3 / (time.perf_counter() - t))
                    reps += 1
        return best
    finally:
        torch.set_num_threads(previous)
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def format_peaks(peaks: dict[tuple[str, int], float]) -> str:
    return ", ".join(f"{d} x{th} threads {p / 1e9:.1f} GFLOP/s" for (d, th), p in sorted(peaks.items()))
