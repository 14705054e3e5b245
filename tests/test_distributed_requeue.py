"""torchrun (2 gloo processes) meets kills and stop signals: with --max-restarts a killed rank brings
the run back from its newest checkpoint, and a stop signal checkpoints mid-epoch; either way the run
ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoint_checks import assert_all_checkpoints_read, assert_identical, checkpoint_weights
from conftest import TINY, write_images

from animegen import checkpoint_format as ckpt
from animegen.training.distributed import _children

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing"),
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks in /proc"),
]


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", ANIMEGEN_CACHE=str(tmp_path / "cache"))


def _start(argv: list[str], tmp_path: Path, name: str) -> subprocess.Popen:
    err = open(tmp_path / f"{name}.err", "wb")  # noqa: SIM115 - the child writes it
    return subprocess.Popen(
        [sys.executable, "-m", "animegen", *argv], stdout=subprocess.DEVNULL, stderr=err, env=_env(tmp_path)
    )


def _newest(run: Path) -> int:
    found = ckpt.list_checkpoints(run / "checkpoints")
    return int(ckpt.CKPT_RE.match(found[-1].name).group(2)) if found else -1


def _ranks(launcher: int) -> dict[int, int]:
    """rank -> pid of the training processes under `animegen train --nproc` (launcher -> torchrun)."""
    found = {}
    for agent in _children(launcher):
        for pid in _children(agent):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = pid
    return found


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.01)


@pytest.fixture
def two_process_run(tmp_path):
    """The command, and its uninterrupted run's final weights: 2 processes, 10 epochs of 6 steps."""
    data = tmp_path / "faces"
    write_images(data, 48, size=16, seed=2)
    argv = ["train", "--data", str(data), "--epochs", "10", "--seed", "4", "--nproc", "2", *TINY]
    full = tmp_path / "full"
    proc = _start([*argv, "--run-dir", str(full)], tmp_path, "full")
    assert proc.wait(timeout=300) == 0, (tmp_path / "full.err").read_text()[-2000:]
    loud = [a for a in argv if a != "--quiet"]  # the tests read "resumed from ..." lines
    return loud, checkpoint_weights(ckpt.list_checkpoints(full / "checkpoints")[-1])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_max_restarts_bring_back_a_run_whose_rank_was_killed(two_process_run, tmp_path):
    """SIGKILL rank 1, then rank 0, each after some checkpoints: torchrun restarts both processes,
    which continue from the newest checkpoint (the launcher adds --resume); the run ends at 0 with
    the uninterrupted run's weights, bit for bit."""
    argv, (expected, meta) = two_process_run
    run = tmp_path / "run"
    cmd = [*argv, "--run-dir", str(run), "--max-restarts", "3", "--checkpoint-every", "1"]
    proc = _start(cmd, tmp_path, "run")
    killed_at = []
    for rank, after in ((1, 8), (0, 30)):
        _wait_for(lambda after=after: _newest(run) >= after, proc, f"a checkpoint at iteration {after}")
        _wait_for(lambda rank=rank: rank in _ranks(proc.pid), proc, f"rank {rank}")
        os.kill(_ranks(proc.pid)[rank], signal.SIGKILL)
        killed_at.append(_newest(run))
    assert proc.wait(timeout=300) == 0, (tmp_path / "run.err").read_text()[-3000:]
    err = (tmp_path / "run.err").read_text()
    assert err.count("resumed from") >= 2, err[-3000:]
    final = assert_all_checkpoints_read(run / "checkpoints")
    got, got_meta = checkpoint_weights(final[-1])
    assert got_meta["iteration"] == meta["iteration"] == 60 and killed_at[-1] < 60
    assert_identical(expected, got)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["SIGUSR1 to the launcher", "SIGTERM to every process"])
def test_a_stop_signal_checkpoints_every_rank_mid_epoch(two_process_run, tmp_path, how):
    """Slurm's warning (SIGUSR1) to `animegen train --nproc 2`, or a SIGTERM to every process of the
    job as `scancel` sends it: the ranks agree on one iteration, rank 0 checkpoints it, the command
    exits 128 + the signal; the same command then ends the run bit-identical to the uninterrupted."""
    argv, (expected, meta) = two_process_run
    run = tmp_path / "run"
    cmd = [*argv, "--run-dir", str(run), "--resume"]
    proc = _start(cmd, tmp_path, "run")
    _wait_for(lambda: _newest(run) >= 6, proc, "the first epoch's checkpoint")
    sig = signal.SIGUSR1 if how.startswith("SIGUSR1") else signal.SIGTERM
    if how.endswith("launcher"):
        os.kill(proc.pid, sig)
    else:
        for pid in [proc.pid, *_children(proc.pid), *_ranks(proc.pid).values()]:
            os.kill(pid, sig)
    assert proc.wait(timeout=120) == 128 + sig
    err = (tmp_path / "run.err").read_text()
    assert f"{signal.Signals(sig).name}: stopping after this step" in err
    stopped = _newest(run)
    assert 6 <= stopped < 60
    proc = _start(cmd, tmp_path, "rest")
    assert proc.wait(timeout=300) == 0, (tmp_path / "rest.err").read_text()[-3000:]
    assert f"resumed from {run / 'checkpoints'}" in (tmp_path / "rest.err").read_text()
    got, got_meta = checkpoint_weights(ckpt.list_checkpoints(run / "checkpoints")[-1])
    assert got_meta["iteration"] == 60
    assert_identical(expected, got)
