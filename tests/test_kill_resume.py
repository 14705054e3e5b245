"""SIGKILL at random moments, then resume: training continues bit for bit, and no checkpoint is
ever left unreadable; resuming without a checkpoint or after the end is a clear outcome."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkpoint_checks import assert_all_checkpoints_read, assert_identical, checkpoint_weights, one_line
from conftest import TINY, write_images

from animegen import checkpoint_format as ckpt
from animegen.cli import main

# ------------------------------------------------------------------------------------ kill and resume

# A Python that imports torch, matplotlib and animegen once, then forks one child per command, each
# running `python -m animegen ARGV` (runpy, exactly what the -m entry runs). Importing torch takes
# 5-15 s on a shared 2-core machine; forking makes each start instant, so the kills land in
# training rather than in `import torch`, and the test stays within its time budget. The test
# SIGKILLs the children, which are real, separate processes.
_FORK_SERVER = r"""
import json, os, runpy, sys, traceback
import torch
torch.set_num_threads(1)
import torch._dynamo  # what torch.optim imports lazily on first use: slow, so done once here
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import animegen.cli, animegen.generate, animegen.training.loop
print("ready", flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd, name, flags in ((0, os.devnull, os.O_RDONLY), (1, job["stdout"], os.O_WRONLY),
                                    (2, job["stderr"], os.O_WRONLY)):
                f = os.open(name, flags | (os.O_CREAT | os.O_TRUNC if fd else 0), 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = ["animegen", *job["argv"]]
            runpy.run_module("animegen", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class _ForkServer:
    def __init__(self, env: dict[str, str], logs: Path):
        self.logs = logs
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        assert self._line(timeout=300) == "ready"

    def _line(self, timeout: float | None) -> str | None:
        """The server's next line, or None if none came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise RuntimeError(f"fork server died (exit {self.proc.wait()})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def start(self, argv: list[str]) -> tuple[int, Path]:
        self.count += 1
        out, err = self.logs / f"{self.count:03d}.out", self.logs / f"{self.count:03d}.err"
        job = {"argv": argv, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        return int(self._line(timeout=60)), err

    def wait(self, timeout: float | None) -> int | None:
        """The child's exit code (-9 when SIGKILLed), or None if it still runs after `timeout` s."""
        line = self._line(timeout)
        return None if line is None else int(line)

    def run(self, argv: list[str], timeout: float = 300) -> int:
        _, err = self.start(argv)
        rc = self.wait(timeout)
        assert rc is not None, f"{argv} did not finish in {timeout} s"
        assert "Traceback" not in err.read_text()
        return rc

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _newest_iteration(ckpt_dir: Path) -> int:
    found = ckpt.list_checkpoints(ckpt_dir)
    return int(ckpt.CKPT_RE.match(found[-1].name).group(2)) if found else -1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """SIGKILL at >= 10 random moments never leaves an unreadable checkpoint, and resuming each time
    (starting afresh while no checkpoint exists yet) ends with G, D and both Adam states
    bit-identical to an uninterrupted run."""
    data = tmp_path / "faces"
    write_images(data, 48, size=20, seed=4)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", ANIMEGEN_CACHE=str(tmp_path / "cache"))
    # 48 images / batch 8 = 6 steps an epoch; 6 epochs = 36 iterations, a checkpoint after each.
    common = ["--data", str(data), "--epochs", "6", "--seed", "17", "--checkpoint-every", "1", *TINY]
    started = time.monotonic()
    server = _ForkServer(env, logs)
    try:
        t0 = time.monotonic()
        full = tmp_path / "full"
        assert server.run(["train", *common, "--run-dir", str(full)]) == 0
        per_iteration = (time.monotonic() - t0) / 36  # an over-estimate: includes start-up

        # The interrupted run decodes into its own cache, so the first kill lands mid-decode.
        run = tmp_path / "killed"
        ckpts = run / "checkpoints"
        fresh = ["train", *common, "--run-dir", str(run), "--cache-dir", str(tmp_path / "cache2")]
        rng = random.Random(20240611)
        kills = fresh_starts = launches = 0
        at: list[int] = []  # the newest checkpoint's iteration after each kill
        while True:
            assert launches < 80, "no end in sight"
            if ckpt.list_checkpoints(ckpts):
                argv = ["train", "--resume", str(run), "--quiet"]
            else:  # killed before the first checkpoint: nothing to resume, so start afresh
                argv = fresh
                fresh_starts += 1
            # Kills are paced by progress, so their number hardly depends on the machine's speed:
            # wait for 0-4 new checkpoints, then a random part of an iteration (any moment of the
            # step/write/prune/sample cycle). The first kill comes as soon as the run dir exists,
            # while the images are decoded, before any checkpoint.
            if launches == 0:
                ready, delay = run.exists, rng.uniform(0.0, 0.02)
            else:
                target = _newest_iteration(ckpts) + rng.randint(0, 4)
                ready = lambda target=target: _newest_iteration(ckpts) >= target  # noqa: E731
                delay = rng.uniform(0.0, 1.5 * per_iteration)
            launches += 1
            pid, err = server.start(argv)
            rc = None
            deadline = time.monotonic() + 300
            while rc is None and not ready():
                assert time.monotonic() < deadline, f"launch {launches} made no progress"
                rc = server.wait(timeout=0.005)
            if rc is None:
                rc = server.wait(timeout=delay)
            if rc is None:
                os.kill(pid, signal.SIGKILL)
                rc = server.wait(timeout=60)
                assert rc == -signal.SIGKILL, f"launch {launches}: exit {rc}: {err.read_text()}"
                kills += 1
                assert_all_checkpoints_read(ckpts)
                at.append(_newest_iteration(ckpts))
                continue
            assert rc == 0, f"launch {launches} ({argv}): exit {rc}: {err.read_text()}"
            assert "Traceback" not in err.read_text()
            break
    finally:
        server.close()

    assert kills >= 10, f"the run finished after only {kills} kills"
    assert fresh_starts >= 2  # the first start, and at least one after a kill before any checkpoint
    final = assert_all_checkpoints_read(ckpts)
    a, meta_a = checkpoint_weights(ckpt.list_checkpoints(full / "checkpoints")[-1])
    b, meta_b = checkpoint_weights(final[-1])
    assert meta_a["iteration"] == meta_b["iteration"] == 36 and meta_b["epochs_done"] == 6
    assert_identical(a, b)
    # Rows written after a checkpoint were dropped on resume: the log reads like one run.
    rows = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows == sorted(set(rows)) and rows[-1] == 36
    temps = [p.name for p in ckpts.iterdir() if p.name.startswith(".ckpt_")]
    print(
        f"\nkill/resume: {kills} SIGKILLs survived in {launches} launches ({fresh_starts - 1} "
        f"restart(s) from scratch, {len(temps)} temp files left), {per_iteration * 36:.1f} s uninterrupted, "
        f"test {time.monotonic() - started:.0f} s; newest checkpoint after each kill: {at}"
    )


def test_resume_before_any_checkpoint_is_one_line_and_a_fresh_start_is_allowed(
    image_folder, tmp_path, capsys
):
    """A run killed while decoding, before its first checkpoint (and before config.json): --resume
    says in one line that there is no checkpoint (exit 2), and training the same --run-dir again
    from the start is allowed (it holds no run yet)."""
    run = tmp_path / "run"
    for sub in ("checkpoints", "samples"):
        (run / sub).mkdir(parents=True)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(run) in line and "no checkpoint" in line
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(args) == 0


def test_resuming_a_finished_run_trains_nothing_and_draws_no_extra_epoch(image_folder, tmp_path):
    """A kill after the last checkpoint, then --resume: nothing is trained, the weights stay, and no
    samples/epoch_NNN.png appears for an epoch that never ran."""
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(args) == 0
    before = checkpoint_weights(ckpt.list_checkpoints(run / "checkpoints")[-1])[0]
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_identical(before, checkpoint_weights(ckpt.list_checkpoints(run / "checkpoints")[-1])[0])
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_001.png"]
