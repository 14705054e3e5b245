"""Reliability: SIGKILL at random moments, damaged and hostile checkpoints, bad run dirs, full disks.

Every property here is about what a user sees when something goes wrong: training resumes exactly
after any kill, no checkpoint is ever left unreadable, a damaged or foreign file is named in one
line (exit 2), nothing is ever unpickled, and a run that cannot write fails before it trains.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from conftest import TINY, write_images
from safetensors.torch import save_file

from animegen import checkpoint_format as ckpt
from animegen.cli import main
from animegen.config import ModelConfig
from animegen.errors import CheckpointError
from animegen.models import Generator

SRC = Path(__file__).resolve().parents[1] / "src" / "animegen"
WEIGHT_PREFIXES = ("G.", "D.", "optG.", "optD.")


def _weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = ckpt.read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(WEIGHT_PREFIXES)}, meta


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def _assert_all_checkpoints_read(ckpt_dir: Path) -> list[Path]:
    """Every ckpt_*.safetensors verifies; temp files exist at most beside them and are not listed."""
    found = sorted(ckpt_dir.glob("ckpt_*.safetensors")) if ckpt_dir.is_dir() else []
    for path in found:
        ckpt.read_checkpoint(path)  # raises CheckpointError naming the file if it is damaged
    assert {p.name for p in ckpt.list_checkpoints(ckpt_dir)} == {p.name for p in found}
    if found:
        newest, notes = ckpt.latest_good_checkpoint(ckpt_dir)
        assert notes == [] and newest == ckpt.list_checkpoints(ckpt_dir)[-1]
    return found


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
                _assert_all_checkpoints_read(ckpts)
                at.append(_newest_iteration(ckpts))
                continue
            assert rc == 0, f"launch {launches} ({argv}): exit {rc}: {err.read_text()}"
            assert "Traceback" not in err.read_text()
            break
    finally:
        server.close()

    assert kills >= 10, f"the run finished after only {kills} kills"
    assert fresh_starts >= 2  # the first start, and at least one after a kill before any checkpoint
    final = _assert_all_checkpoints_read(ckpts)
    a, meta_a = _weights(ckpt.list_checkpoints(full / "checkpoints")[-1])
    b, meta_b = _weights(final[-1])
    assert meta_a["iteration"] == meta_b["iteration"] == 36 and meta_b["epochs_done"] == 6
    _assert_identical(a, b)
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
    line = _one_line(capsys.readouterr().err)
    assert str(run) in line and "no checkpoint" in line
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(args) == 0


def test_resuming_a_finished_run_trains_nothing_and_draws_no_extra_epoch(image_folder, tmp_path):
    """A kill after the last checkpoint, then --resume: nothing is trained, the weights stay, and no
    samples/epoch_NNN.png appears for an epoch that never ran."""
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(args) == 0
    before = _weights(ckpt.list_checkpoints(run / "checkpoints")[-1])[0]
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _assert_identical(before, _weights(ckpt.list_checkpoints(run / "checkpoints")[-1])[0])
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_001.png"]


# ------------------------------------------------------------------------------------ damaged checkpoints


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished 2-epoch tiny run holding ckpt_e001_i00000005 and ckpt_e002_i00000010."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "faces"
    write_images(data, 40)
    run = root / "run"
    argv = ["train", "--data", str(data), "--epochs", "2", "--seed", "2", "--run-dir", str(run)]
    assert main([*argv, "--cache-dir", str(root / "cache"), *TINY]) == 0
    names = [p.name for p in ckpt.list_checkpoints(run / "checkpoints")]
    assert names == ["ckpt_e001_i00000005.safetensors", "ckpt_e002_i00000010.safetensors"]
    return run


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


def _flip(path: Path, offset: int, bit: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


def _header_len(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


DAMAGE = {
    "truncated-in-data": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "truncated-in-header": lambda p: p.write_bytes(p.read_bytes()[:200]),
    "empty": lambda p: p.write_bytes(b""),
    "bit-flip-in-tensor": lambda p: _flip(p, p.stat().st_size - 40),
    "bit-flip-in-metadata": lambda p: _flip(p, 8 + _header_len(p) // 2, 0x01),
}
REASON = re.compile(r"checksum mismatch|damaged|truncated")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_generate_run_dir_skips_damaged_newest_with_one_warning(run_copy, tmp_path, capsys, damage):
    """`generate RUN_DIR` with a damaged newest checkpoint warns in one line naming it and samples
    from the previous good checkpoint."""
    newest = ckpt.list_checkpoints(run_copy / "checkpoints")[-1]
    DAMAGE[damage](newest)
    grid = tmp_path / "grid.png"
    assert main(["generate", str(run_copy), "-n", "4", "--grid", str(grid)]) == 0
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("warning:") and newest.name in line and REASON.search(line)
    assert grid.exists()
    from animegen.generate import load_generator

    assert load_generator(run_copy).source.name == "ckpt_e001_i00000005.safetensors"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_generate_damaged_file_exits_2_naming_it(run_copy, tmp_path, capsys, damage):
    """`generate FILE` on a damaged checkpoint exits 2 with one line naming the file and saying it is
    damaged (a bit flip in a tensor: checksum mismatch)."""
    newest = ckpt.list_checkpoints(run_copy / "checkpoints")[-1]
    DAMAGE[damage](newest)
    assert main(["generate", str(newest), "-n", "4", "--grid", str(tmp_path / "g.png")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(newest) in line and REASON.search(line), line
    if damage == "bit-flip-in-tensor":
        assert "checksum mismatch" in line
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("damage", ["truncated-in-data", "bit-flip-in-tensor"])
def test_resume_skips_damaged_newest_with_one_warning(trained_run, run_copy, capsys, monkeypatch, damage):
    """`train --resume RUN_DIR` with a damaged newest checkpoint warns in one line naming it, resumes
    from the previous good one, and retraining reproduces the damaged checkpoint's weights exactly."""
    monkeypatch.delenv("COLUMNS", raising=False)  # stderr is a pipe or a log file, not a terminal
    newest = ckpt.list_checkpoints(run_copy / "checkpoints")[-1]
    DAMAGE[damage](newest)
    assert main(["train", "--resume", str(run_copy), "--quiet"]) == 0
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith("warning:") and newest.name in line and REASON.search(line), line
    assert captured.out == ""
    original = _weights(ckpt.list_checkpoints(trained_run / "checkpoints")[-1])[0]
    _assert_identical(original, _weights(newest)[0])


def test_single_bit_flips_are_always_detected(trained_run):
    """A single bit flipped anywhere in a checkpoint (header, metadata or tensors) is always a
    CheckpointError naming the file, never another exception and never a silent success."""
    source = ckpt.list_checkpoints(trained_run / "checkpoints")[-1]
    good = source.read_bytes()
    end_of_header = 8 + _header_len(source)
    rng = random.Random(7)
    offsets = list(range(8)) + rng.sample(range(8, end_of_header), 300)
    offsets += rng.sample(range(end_of_header, len(good)), 100)
    damaged = source.parent.parent.parent / "flipped.safetensors"
    for offset in offsets:
        data = bytearray(good)
        data[offset] ^= 1 << rng.randrange(8)
        damaged.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=re.escape(str(damaged))):
            ckpt.read_checkpoint(damaged)
    damaged.unlink()


# ------------------------------------------------------------------------------------ hostile checkpoints


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious .pth does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(tmp_path: Path, marker: Path) -> list[Path]:
    zipped = tmp_path / "netG_001.pth"
    torch.save({"layer1.0.weight": _RunsCode(marker)}, zipped)
    legacy = tmp_path / "netG_002.pth"
    torch.save({"layer1.0.weight": _RunsCode(marker)}, legacy, _use_new_zipfile_serialization=False)
    raw = tmp_path / "netG_003.pth"
    raw.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    return [zipped, legacy, raw]


def test_the_code_running_pickle_is_live(tmp_path):
    """Guards the payload used below: unpickled naively, it really does run its command."""
    marker = tmp_path / "ran"
    raw = _evil_files(tmp_path, marker)[-1]
    pickle.loads(raw.read_bytes())  # the point of this test
    assert marker.exists()


@pytest.mark.parametrize("index", [0, 1, 2], ids=["torch-zip", "torch-legacy", "raw-pickle"])
@pytest.mark.parametrize("command", ["generate", "interpolate", "train-resume"])
def test_code_running_pickle_is_refused(tmp_path, capsys, index, command):
    """A .pth that would run code when unpickled is refused with exit 2 and one line naming it, and
    the code never runs."""
    marker = tmp_path / "pwned"
    evil = _evil_files(tmp_path, marker)[index]
    out = tmp_path / "out.gif"
    argv = {
        "generate": ["generate", str(evil), "--grid", str(out)],
        "interpolate": ["interpolate", str(evil), "--steps", "4", "--out", str(out)],
        "train-resume": ["train", "--resume", str(evil), "--quiet"],
    }[command]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(evil) in line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("index", [0, 1, 2], ids=["torch-zip", "torch-legacy", "raw-pickle"])
def test_pickle_refusal_names_what_it_refused_and_gives_no_unsafe_advice(tmp_path, capsys, index):
    """The refusal line says what the file tried to import (os.system here), and never passes on
    torch's advice to retry with weights_only=False (which would run the code)."""
    evil = _evil_files(tmp_path, tmp_path / "pwned")[index]
    assert main(["generate", str(evil), "--grid", str(tmp_path / "g.png")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "refused" in line and re.search(r"\b(posix|os)\.system\b", line), line
    assert "weights_only" not in line, line


@pytest.mark.parametrize("command", ["generate", "train-resume"])
def test_foreign_safetensors_is_refused(tmp_path, capsys, command):
    """A valid safetensors file that is not an animegen checkpoint: exit 2, one line naming it."""
    foreign = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(4, 4)}, str(foreign), metadata={"format": "pt"})
    argv = ["generate", str(foreign)] if command == "generate" else ["train", "--resume", str(foreign)]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(foreign) in line and "not an animegen checkpoint" in line


@pytest.mark.parametrize(
    "flags, key, ours, theirs",
    [
        (["--image-size", "32"], r"image.size", "16", "32"),
        (["--set", "model.arch=dcgan64", "--image-size", "32"], "arch", "seed", "dcgan64"),
        (["--set", "model.width=0.25"], "width", "0.125", "0.25"),
        (["--set", "model.z_dim=64"], "z_dim", "100", "64"),
    ],
)
def test_resume_with_other_architecture_names_the_mismatch(run_copy, capsys, flags, key, ours, theirs):
    """`train --resume` with flags that change the architecture: exit 2 and one line naming the
    setting, the checkpoint's value and the requested one."""
    assert main(["train", "--resume", str(run_copy), "--epochs", "3", *flags, "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert re.search(key, line) and ours in line and theirs in line, line


def test_pth_with_wrong_shaped_tensor_names_key_and_shapes(tmp_path, capsys):
    """A tutorial-style .pth with one tensor of the wrong shape: exit 2, one line naming the key,
    the shape found and the shape expected."""
    state = Generator(ModelConfig(image_size=48, width=0.25)).state_dict()
    state["layer2.1.weight"] = torch.ones(7)
    bad = tmp_path / "netG_009.pth"
    torch.save(state, bad)
    assert main(["generate", str(bad), "--grid", str(tmp_path / "g.png")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(bad) in line and "layer2.1.weight" in line and "(7,)" in line and "(64,)" in line


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


UNPICKLERS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "pandas.read_pickle",
    "pd.read_pickle",
    "torch.serialization.load",
    "shelve.open",
}


def test_source_never_unpickles():
    """Static guard over src/: every torch.load passes weights_only=True, numpy never allows pickles,
    and nothing calls pickle.load/loads (or dill, joblib, ...) or imports those names directly."""
    offenders: list[str] = []
    torch_loads = 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(SRC.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "_pickle", "dill", "torch"}:
                bad = [a.name for a in node.names if a.name in {"load", "loads", "Unpickler"}]
                offenders += [f"{where}: from {node.module} import {name}" for name in bad]
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                torch_loads += 1
                flag = kw.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offenders.append(f"{where}: torch.load without weights_only=True")
            elif name in UNPICKLERS:
                offenders.append(f"{where}: {name}")
            elif name in {"np.load", "numpy.load"}:
                flag = kw.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    offenders.append(f"{where}: {name} with allow_pickle")
    assert torch_loads >= 1, "the scan found no torch.load at all: is SRC right?"
    assert offenders == []
    # A plain-text cross-check, in case a call is spelled in a way the AST walk above misses.
    for path in sorted(SRC.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not re.search(r"\bpickle\.loads?\(|\bUnpickler\(", code), f"{path}:{n}: {line}"
            if "torch.load(" in code:
                assert "weights_only=True" in code, f"{path}:{n}: {line}"


# ------------------------------------------------------------------------------------ disk and permissions


def _cache_is_empty() -> bool:
    cache = Path(os.environ["ANIMEGEN_CACHE"])
    return not cache.exists() or not any(cache.iterdir())


def _bad_run_dir(tmp_path: Path, kind: str) -> Path:
    if kind == "under-a-file":
        (tmp_path / "somefile").write_text("not a folder")
        return tmp_path / "somefile" / "run"
    if kind == "read-only":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "run"
    return Path(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "under-a-file",
        "/proc/version/run",
        "/proc/self/animegen-run",
        pytest.param(
            "read-only",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 555"),
        ),
    ],
)
def test_unwritable_run_dir_fails_before_training(image_folder, tmp_path, capsys, kind):
    """A run dir that cannot be created or written: exit 2, one line naming it, before any image is
    decoded or any step trained."""
    run = _bad_run_dir(tmp_path, kind)
    argv = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(run) in line and "not writable" in line
    assert _cache_is_empty()


def test_full_disk_fails_before_training(image_folder, tmp_path, capsys, monkeypatch):
    """1 MB free: exit 2 with one line "only N MiB free" before any image is decoded or step trained."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    run = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert re.search(r"only \d+ MiB free", line) and str(run) in line
    assert _cache_is_empty() and ckpt.list_checkpoints(run / "checkpoints") == []
    assert not (run / "log.jsonl").exists()


def test_checkpoint_write_failing_midway_keeps_the_previous(image_folder, tmp_path, capsys, monkeypatch):
    """The disk fills while the 2nd checkpoint is written: exit 2, one line saying the write failed
    and the previous checkpoint is intact; it still reads, the half-written temp file is ignored,
    and --resume continues from it."""
    real = ckpt.write_atomic
    calls: list[Path] = []

    def fill_up(path, data):
        calls.append(Path(path))
        if len(calls) == 2:  # leave what a write cut short by a full disk leaves, then fail
            Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}").write_bytes(data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt, "write_atomic", fill_up)
    run = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run)]
    assert main([*argv, "--checkpoint-every", "1", *TINY]) == 2
    line = _one_line(capsys.readouterr().err)
    first = run / "checkpoints" / "ckpt_e000_i00000001.safetensors"
    assert "write failed" in line and "No space left on device" in line
    assert "intact" in line and first.name in line
    assert ckpt.list_checkpoints(run / "checkpoints") == [first]
    assert ckpt.latest_good_checkpoint(run / "checkpoints") == (first, [])
    assert _weights(first)[1]["iteration"] == 1
    monkeypatch.setattr(ckpt, "write_atomic", real)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert _weights(ckpt.list_checkpoints(run / "checkpoints")[-1])[1]["iteration"] == 5
