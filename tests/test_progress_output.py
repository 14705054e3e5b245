"""What `animegen train` prints: into a pipe or log file, on a NO_COLOR terminal, and with --quiet.

Progress bars are for terminals only: a pipe gets plain lines, one per message, with no carriage
returns or escape sequences; NO_COLOR removes colour on a terminal; --quiet leaves stdout empty.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import TINY, write_images

from animegen.training.progress import Reporter

LOUD = [a for a in TINY if a != "--quiet"]
SGR = re.compile(rb"\x1b\[([0-9;]*)m")


def _colour_codes(data: bytes) -> list[bytes]:
    """The SGR sequences in `data` that set a foreground or background colour."""
    found = []
    for m in SGR.finditer(data):
        params = [int(p) for p in m.group(1).split(b";") if p]
        if any(30 <= p <= 38 or 40 <= p <= 48 or 90 <= p <= 97 or 100 <= p <= 107 for p in params):
            found.append(m.group(0))
    return found


def _folder(root: Path) -> Path:
    """16 good images and one empty .jpg, so every run also prints a warning."""
    data = root / "faces"
    write_images(data, 16)
    (data / "broken.jpg").write_bytes(b"")
    return data


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", ANIMEGEN_CACHE=str(root / "cache"), **extra)
    for name in ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TERM"):
        if name not in extra:
            env.pop(name, None)
    return env


def _train_argv(data: Path, run: Path, *flags: str) -> list[str]:
    base = [sys.executable, "-m", "animegen", "train", "--data", str(data), "--epochs", "2"]
    return [*base, "--run-dir", str(run), *LOUD, *flags]


@pytest.fixture(scope="module")
def piped(tmp_path_factory) -> subprocess.CompletedProcess:
    """A 2-epoch run with stdout and stderr going to pipes (as under nohup, CI or `2> log`)."""
    root = tmp_path_factory.mktemp("piped")
    argv = _train_argv(_folder(root), root / "run")
    proc = subprocess.run(argv, capture_output=True, env=_env(root), timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


@pytest.mark.timeout(300)
def test_piped_output_has_no_control_characters(piped):
    """Into a pipe: no progress-bar carriage returns and no escape sequences, on stdout or stderr."""
    for name, data in (("stdout", piped.stdout), ("stderr", piped.stderr)):
        assert b"\r" not in data, name
        assert b"\x1b" not in data, name
    assert piped.stdout and piped.stderr  # the run did print something to check


@pytest.mark.timeout(300)
def test_piped_output_is_one_line_per_message(piped):
    """Into a pipe, each message is one line, whatever its length: one summary line per epoch on
    stdout, then the final line; on stderr the data, warning and device lines, nothing wrapped."""
    out = piped.stdout.decode().splitlines()
    err = piped.stderr.decode().splitlines()
    assert [line.split("  ")[0] for line in out[:2]] == ["epoch 1/2", "epoch 2/2"], out
    assert len(out) == 3 and out[2].startswith("done in "), out
    assert all("samples" in line for line in out), out
    assert [line.split(":")[0] for line in err] == ["data", "warning", "device"], err
    assert "broken.jpg (empty file)" in err[1]
    # The device line names what runs: the batch, the precision and each speed setting in force.
    assert err[2].startswith("device: cpu, 1 thread; batch 8, "), err
    assert "channels_last, fused Adam" in err[2] and ("bf16 autocast" in err[2] or "fp32" in err[2])


@pytest.mark.timeout(300)
def test_no_color_on_a_terminal_has_no_colour_codes(tmp_path):
    """On a terminal (a pty) with NO_COLOR=1, progress bars may draw, but no colour is ever set."""
    data = _folder(tmp_path)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = _env(tmp_path, NO_COLOR="1", TERM="xterm-256color")
    proc = subprocess.Popen(
        _train_argv(data, tmp_path / "run"),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0, output.decode(errors="replace")
    assert b"broken.jpg" in output and b"epoch 2/2" in output
    assert b"\x1b[" in output  # it really ran as on a terminal (bars drawn), yet:
    assert _colour_codes(output) == []


def test_colour_check_above_is_not_vacuous(monkeypatch):
    """Guards the NO_COLOR test: on a colour terminal without NO_COLOR a warning is coloured, and
    NO_COLOR takes exactly that colour away."""

    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm-256color")
    for no_color, coloured in ((None, True), ("1", False)):
        if no_color is None:
            monkeypatch.delenv("NO_COLOR", raising=False)
        else:
            monkeypatch.setenv("NO_COLOR", no_color)
        monkeypatch.delenv("FORCE_COLOR", raising=False)
        fake = _Tty()
        monkeypatch.setattr(sys, "stderr", fake)
        Reporter().warn("something odd")
        assert bool(_colour_codes(fake.getvalue().encode())) is coloured, fake.getvalue()


@pytest.mark.timeout(300)
def test_quiet_prints_nothing_on_stdout(tmp_path):
    """--quiet: stdout stays empty (no epoch lines, no final line); stderr holds only the warning."""
    data = _folder(tmp_path)
    argv = _train_argv(data, tmp_path / "run", "--quiet")
    proc = subprocess.run(argv, capture_output=True, env=_env(tmp_path), timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == ""
    err = proc.stderr.decode().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: skipped 1 of 17 files"), err


def test_ctrl_c_saves_a_checkpoint_and_exits_130(image_folder, tmp_path):
    """SIGINT mid-run finishes the step, writes a readable checkpoint at the exact position, exits 130,
    and the run resumes from it."""
    import signal

    from animegen import checkpoint_format as ckpt

    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "animegen",
            "train",
            "--data",
            str(image_folder),
            "--epochs",
            "500",
            "--run-dir",
            str(run),
            *LOUD,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 180
    while not (run / "log.jsonl").exists() or not (run / "log.jsonl").read_text().strip():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted: saved" in err and b"Traceback" not in err
    path, _ = ckpt.latest_good_checkpoint(run / "checkpoints")
    _, meta = ckpt.read_checkpoint(path)
    assert 0 < meta["iteration"] < 500 * 5
