"""The benchmark scripts: their arithmetic, their arguments, and that each runs end to end on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_images

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from throughput import parse_args  # noqa: E402
from throughput_machine import gemm_routes  # noqa: E402
from throughput_profile import device_summary  # noqa: E402


def test_every_gemm_route_is_the_same_size_of_product():
    n = 256
    torch.manual_seed(0)
    routes = gemm_routes(torch.device("cpu"), torch.float32, n)
    assert set(routes) == {"mm", "conv1x1"}
    mm = routes["mm"]()
    conv = routes["conv1x1"]()
    # mm is a @ b; the 1x1 convolution over n pixels (16 images of 8 x n/128) computes (a @ b.T),
    # one output channel per column: both are n x n x n products, so both take 2 n^3 FLOPs.
    assert mm.shape == (n, n)
    assert conv.shape == (16, n, 8, n // 128)
    torch.manual_seed(0)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.testing.assert_close(mm, a @ b)
    pixels_by_channel = conv.transpose(0, 1).reshape(n, n).t()
    torch.testing.assert_close(pixels_by_channel, a @ b.t(), rtol=1e-4, atol=1e-4)


def test_log_every_beyond_the_timed_steps_is_refused(tmp_path, capsys):
    # With fewer timed steps than --log-every, no two log rows fall inside the timing and every
    # animegen row would fail only after its whole run.
    with pytest.raises(SystemExit) as e:
        parse_args(["--data", str(tmp_path), "--iters", "3", "--log-every", "25"])
    assert e.value.code == 2
    assert "--log-every 25 must be between 1 and --iters (3)" in capsys.readouterr().err


@pytest.mark.slow
def test_throughput_prints_a_figure_for_each_row(tmp_path):
    write_images(tmp_path / "faces", 48, size=96)
    out = tmp_path / "perf.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "throughput.py"), "--data", str(tmp_path / "faces"),
         "--device", "cpu", "--configs", "seed", "default/batch=8", "--iters", "2", "--warmup", "1",
         "--json", str(out), "--reference", str(tmp_path / "absent.py")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"seed", "default/batch=8"}
    for r in results.values():
        assert r["error"] is None and r["images_per_s"] > 0 and r["timed_steps"] == 2
        assert 0 < r["mfu"] and r["peak_rss_mb"] > 0
    assert results["default/batch=8"]["batch"] == 8


@pytest.mark.slow
def test_gpu_script_runs_dry_on_a_cpu(tmp_path):
    # The GPU measurement gets one call when a GPU is lent: its plumbing is checked here, on a CPU,
    # where --cuda-graph runs the same step eagerly.
    write_images(tmp_path / "faces", 400, size=96)  # 6 batches of 64: the graphed profile warms up 5
    env = dict(
        os.environ, DEVICE="cpu", ITERS="2", WARMUP="1", LOG_EVERY="1", CONFIGS="seed/cuda_graph",
        GUARD_STEPS="4", EVAL_EVERY="2", EVAL_N="8", SIZE="32", PROFILE_STEPS="1",
        CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path),
    )  # fmt: skip
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), str(tmp_path / "faces"), str(tmp_path / "ref.py"), str(out), "900"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    (row,) = json.loads((out / "throughput.json").read_text())["results"]
    assert row["name"] == "seed/cuda_graph" and row["images_per_s"] > 0, log
    assert "profiled 1 steps of default/eager " in log and "profiled 1 steps of default/cuda_graph" in log
    assert log.count("Input Shapes") == 2  # one row per layer in both profiles
    for run in ("eager-s0", "graph-s0", "eager-s1", "graph-s1"):
        assert f"{run}: exit 0 (2 evaluations)" in log
    swd_table = (out / "guard.txt").read_text().split("late losses")[0]
    # Eagerly, the graphed path is the plain step: the same seed gives the same held-out SWD.
    rows = [row.split() for row in swd_table.splitlines() if row.startswith(("eager", "graph"))]
    swd = {row[0]: row[1:] for row in rows}
    assert len(swd) == 4 and swd["eager-s0"] == swd["graph-s0"] and swd["eager-s1"] == swd["graph-s1"]
    assert (out / "runs.tar.gz").stat().st_size > 0
    assert not list(tmp_path.glob("animegen-gpu-runs.*")), "scratch runs left behind"


def test_device_summary_counts_launches_busy_time_and_host_waits():
    class Event:
        def __init__(self, key: str, count: int = 1, device_us: float = 0.0, annotation: bool = False):
            self.key, self.count, self.self_device_time_total = key, count, device_us
            self.is_user_annotation = annotation

    averages = [
        # Annotated ranges cover the kernels below on the GPU timeline: not kernel time themselves.
        Event("## train_step", 2, device_us=5200.0),
        Event("Optimizer.step#Adam.step", 4, device_us=1000.0, annotation=True),
        Event("cudaLaunchKernel", 300),
        Event("cudaGraphLaunch", 0),
        Event("void conv_kernel", 150, device_us=4000.0),
        Event("void adam_kernel", 150, device_us=1000.0),
        Event("cudaStreamSynchronize", 2),
        Event("cudaDeviceSynchronize", 1),
    ]
    line = device_summary(averages, steps=2, seconds=0.02)
    assert line == (
        "per step: 10.00 ms wall, 2.50 ms of GPU kernels (25% busy), 150 kernel launches, 0 graph launches; "
        "3 host waits for the GPU in 2 steps (the closing synchronize included)"
    )


def test_profile_by_shape_tells_the_layers_apart(tmp_path):
    # The per-shape table is what found G's slow 1024 -> 512 weight gradient: each convolution
    # shows up once per layer, named by its weight's shape.
    write_images(tmp_path / "faces", 24, size=96)
    proc = subprocess.run(
        [sys.executable, str(BENCH / "throughput.py"), "--data", str(tmp_path / "faces"), "--device", "cpu",
         "--profile", "seed", "--profile-steps", "1", "--warmup", "1", "--by-shape"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "profiled 1 steps of seed " in proc.stdout and "Input Shapes" in proc.stdout
    assert "[1024, 512, 4, 4]" in proc.stdout and "[512, 256, 4, 4]" in proc.stdout
