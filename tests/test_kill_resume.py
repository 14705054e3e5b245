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


def plant_fault(kind, n):
    # SIGKILL this process at the n-th time it reaches one moment of a run's life.
    import signal
    from pathlib import Path
    seen = [0]

    def due():
        seen[0] += 1
        return seen[0] == n

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def around(owner, name, before):
        original = getattr(owner, name)

        def patched(*args, **kwargs):
            before(*args, **kwargs)
            return original(*args, **kwargs)

        setattr(owner, name, patched)

    if kind == "decode":  # the n-th image decoded into the cache
        import animegen.data.images as module
        around(module, "_try_load_hwc", lambda *a, **k: due() and die())
    elif kind == "step":  # before the n-th training step of this launch
        import animegen.training.loop as module
        around(module, "train_step", lambda *a, **k: due() and die())
    elif kind == "evaluation":  # inside the n-th held-out evaluation, its faces sampled
        import animegen.training.evaluator as module
        around(module, "evaluate", lambda *a, **k: due() and die())
    elif kind == "checkpoint-write":  # halfway through writing the n-th checkpoint's bytes
        import animegen.checkpoint_format as module

        def half_then_die(path, data):
            path = Path(path)
            if path.name.startswith("ckpt_") and due():
                path.with_name(f".{path.name}.tmp{os.getpid()}").write_bytes(data[: len(data) // 2])
                die()

        around(module, "write_atomic", half_then_die)
    else:
        raise ValueError(kind)


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
            if job.get("fault"):
                plant_fault(**job["fault"])
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

    def start(self, argv: list[str], fault: dict | None = None) -> tuple[int, Path]:
        self.count += 1
        out, err = self.logs / f"{self.count:03d}.out", self.logs / f"{self.count:03d}.err"
        job = {"argv": argv, "stdout": str(out), "stderr": str(err), "fault": fault}
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


# Kills planted at the moments of a run's life that a kill from outside rarely hits, before the
# kills at random moments: (where, at the n-th time this launch gets there).
PLANTED = [
    {"kind": "decode", "n": 20},  # while the cache is built, before any checkpoint
    {"kind": "step", "n": 1},  # before the first checkpoint
    {"kind": "checkpoint-write", "n": 2},  # while a checkpoint is written
    {"kind": "evaluation", "n": 1},  # during a held-out evaluation
    {"kind": "step", "n": 4},  # mid-epoch
]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_across_a_runs_whole_life_then_the_same_command_ends_bit_identical(tmp_path):
    """SIGKILL while the cache is built, before the first checkpoint, while a checkpoint is written,
    during an evaluation and mid-epoch, then at >= 10 random moments; every launch is the same
    command (`--run-dir R --resume`). No checkpoint is ever left unreadable, and the run ends with
    G, D and both Adam states bit-identical to an uninterrupted run, its log and held-out
    evaluations those of one run."""
    data = tmp_path / "faces"
    write_images(data, 64, size=20, seed=4)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", ANIMEGEN_CACHE=str(tmp_path / "cache"))
    # 48 training images / batch 8 = 6 steps an epoch; 6 epochs = 36 iterations, a checkpoint after
    # each, a held-out evaluation (SWD on the 16 held-out images) every 4.
    common = [
        "train", "--data", str(data), "--epochs", "6", "--seed", "17", "--checkpoint-every", "1",
        "--holdout", "0.25", "--eval-every", "4", "--set", "train.eval_metrics=swd",
        *[a for a in TINY if a != "--quiet"],
    ]  # fmt: skip
    started = time.monotonic()
    server = _ForkServer(env, logs)
    try:
        t0 = time.monotonic()
        full = tmp_path / "full"
        assert server.run([*common, "--run-dir", str(full)]) == 0
        per_iteration = (time.monotonic() - t0) / 36  # an over-estimate: includes start-up

        # The interrupted run decodes into its own cache, so the planted kill lands mid-decode.
        run = tmp_path / "killed"
        ckpts = run / "checkpoints"
        argv = [*common, "--run-dir", str(run), "--cache-dir", str(tmp_path / "cache2"), "--resume"]
        rng = random.Random(20240611)
        kills = launches = 0
        at: list[int] = []  # the newest checkpoint's iteration after each kill
        while True:
            assert launches < 80, "no end in sight"
            fault = PLANTED[launches] if launches < len(PLANTED) else None
            # Random kills are paced by progress, so their number hardly depends on the machine's
            # speed: wait for 0-4 new checkpoints, then a random part of an iteration (any moment of
            # the step/write/prune/sample/evaluate cycle).
            target = _newest_iteration(ckpts) + rng.randint(0, 4)
            ready = lambda target=target: _newest_iteration(ckpts) >= target  # noqa: E731
            delay = rng.uniform(0.0, 1.5 * per_iteration)
            launches += 1
            pid, err = server.start(argv, fault)
            rc = None
            deadline = time.monotonic() + 300
            while rc is None and (fault or not ready()):
                assert time.monotonic() < deadline, f"launch {launches} made no progress"
                rc = server.wait(timeout=0.005 if not fault else 1)
            if rc is None:
                rc = server.wait(timeout=delay)
            if rc is None:
                os.kill(pid, signal.SIGKILL)
                rc = server.wait(timeout=60)
            if rc == -signal.SIGKILL:
                kills += 1
                assert_all_checkpoints_read(ckpts)
                at.append(_newest_iteration(ckpts))
                continue
            assert rc == 0, f"launch {launches} ({fault}): exit {rc}: {err.read_text()}"
            assert "Traceback" not in err.read_text()
            break
    finally:
        server.close()

    said = [(logs / f"{i:03d}.err").read_text() for i in range(2, launches + 2)]
    assert f"{run}: no run there yet, starting one" in said[0]
    # Killed while decoding: config.json was written, so the next launch starts from it.
    assert f"{run}: no checkpoint yet; starting it from step 0 with its saved config.json" in said[1]
    assert "removed 1 temp file(s)" in said[3]  # the checkpoint cut short by the planted kill
    assert kills >= 10 + len(PLANTED), f"the run finished after only {kills} kills"
    final = assert_all_checkpoints_read(ckpts)
    a, meta_a = checkpoint_weights(ckpt.list_checkpoints(full / "checkpoints")[-1])
    b, meta_b = checkpoint_weights(final[-1])
    assert meta_a["iteration"] == meta_b["iteration"] == 36 and meta_b["epochs_done"] == 6
    assert_identical(a, b)
    # Rows written after a checkpoint were dropped on resume: the log reads like one run, and its
    # evaluations are the uninterrupted run's.
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    its = [r["iteration"] for r in rows if r.get("kind") is None]
    assert its == sorted(set(its)) and its[-1] == 36
    evals = lambda r: [(e["iteration"], e["swd"]) for e in r if e.get("kind") == "eval"]  # noqa: E731
    uninterrupted = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert evals(rows) == evals(uninterrupted) and len(evals(rows)) == 9
    temps = [p.name for p in ckpts.iterdir() if p.name.startswith(".ckpt_")]
    print(
        f"\nkill/resume: {kills} SIGKILLs ({len(PLANTED)} planted) survived in {launches} launches, "
        f"{len(temps)} temp files left, {per_iteration * 36:.1f} s uninterrupted, "
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
