"""Every command has --help with an example, and bad input exits 2 with one line on stderr."""

from __future__ import annotations

import subprocess
import sys

import pytest

from animegen import __version__
from animegen.cli import main

COMMANDS = ["train", "demo", "generate", "interpolate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out
    # Unset flags defer to the preset or config file; "(default: None)" would misstate that.
    assert "default: None" not in out and "default: False" not in out


def test_train_help_names_every_preset(capsys):
    from animegen.config import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ", ".join(PRESETS) in out


def test_version_and_module_entry():
    out = subprocess.run([sys.executable, "-m", "animegen", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"animegen {__version__}"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data", "/nonexistent/folder", "--quiet"], "/nonexistent/folder"),
        (["train", "--preset", "nope"], "unknown preset"),
        (["train", "--image-size", "100"], "image size 100"),
        (["train", "--resume", "/nonexistent/run"], "no such run dir"),
        (["generate", "/nonexistent.safetensors"], "no such file"),
        (["generate", "x", "-n", "0"], "-n must be"),
    ],
)
def test_bad_input_exit_2_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle", [(["train", "--bogus"], "unrecognized"), (["interpolate"], "required")]
)
def test_usage_errors_exit_2_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and needle in err and len(err.splitlines()) == 1


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "no image files found" in err


def test_a_run_that_never_starts_leaves_no_run_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for _ in range(2):  # else each retry would make runs/default, runs/default-2, ...
        assert main(["train", "--data", "empty", "--quiet"]) == 2
        assert main(["train", "--data", "nowhere", "--quiet", "--run-dir", "a/b/run"]) == 2
    assert not (tmp_path / "runs").exists() and not (tmp_path / "a").exists()
    # A run dir that was there before is the user's: kept, with whatever it held.
    kept = tmp_path / "mine"
    (kept / "checkpoints").mkdir(parents=True)
    assert main(["train", "--data", "empty", "--quiet", "--run-dir", "mine"]) == 2
    assert (kept / "checkpoints").is_dir() and not (kept / "samples").exists()
    capsys.readouterr()


def test_garbage_checkpoint(tmp_path, capsys):
    bad = tmp_path / "ckpt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    assert main(["generate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ckpt.safetensors" in err and len(err.strip().splitlines()) == 1
