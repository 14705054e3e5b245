"""torch.profiler over a few steps of one throughput row, in-process, and a per-step GPU summary."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from throughput_machine import sync
from throughput_rows import BenchConfig, resolve


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
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with torch_profile(activities=activities, record_shapes=args.by_shape) as prof:
        for _ in range(steps):
            step()
        sync(device)
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
