"""Run dirs that cannot be written and full disks: a run fails before it trains, and a checkpoint
write that fails midway keeps the previous checkpoint."""

from __future__ import annotations

import os
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from checkpoint_checks import checkpoint_weights, one_line
from conftest import TINY

from animegen import checkpoint_format as ckpt
from animegen.cli import main

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
    line = one_line(capsys.readouterr().err)
    assert str(run) in line and "not writable" in line
    assert _cache_is_empty()


def test_full_disk_fails_before_training(image_folder, tmp_path, capsys, monkeypatch):
    """1 MB free: exit 2 with one line "only N MiB free" before any image is decoded or step trained."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    run = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert re.search(r"only \d+ MiB free", line) and str(run) in line
    assert _cache_is_empty() and ckpt.list_checkpoints(run / "checkpoints") == []
    assert not (run / "log.jsonl").exists()


@pytest.mark.parametrize(
    "errno, says", [(28, "No space left on device"), (30, "Read-only file system")], ids=["full", "read-only"]
)
def test_checkpoint_write_failing_midway_keeps_the_previous(
    image_folder, tmp_path, capsys, monkeypatch, errno, says
):
    """The disk fills, or the file system turns read-only, while the 2nd checkpoint is written:
    exit 2, one line saying the write failed and the previous checkpoint is intact; it still reads,
    the half-written temp file is ignored, and --resume continues from it."""
    real = ckpt.write_atomic
    calls: list[Path] = []

    def fail_midway(path, data):
        if Path(path).suffix == ".safetensors":
            calls.append(Path(path))
        if len(calls) == 2:  # leave what a write cut short leaves, then fail
            Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}").write_bytes(data[: len(data) // 2])
            raise OSError(errno, says)
        real(path, data)

    monkeypatch.setattr(ckpt, "write_atomic", fail_midway)
    run = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run)]
    assert main([*argv, "--checkpoint-every", "1", *TINY]) == 2
    line = one_line(capsys.readouterr().err)
    first = run / "checkpoints" / "ckpt_e000_i00000001.safetensors"
    assert "write failed" in line and says in line
    assert "intact" in line and first.name in line
    assert ckpt.list_checkpoints(run / "checkpoints") == [first]
    assert ckpt.latest_good_checkpoint(run / "checkpoints") == (first, [])
    assert checkpoint_weights(first)[1]["iteration"] == 1
    monkeypatch.setattr(ckpt, "write_atomic", real)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert checkpoint_weights(ckpt.list_checkpoints(run / "checkpoints")[-1])[1]["iteration"] == 5


def test_resuming_a_run_whose_dir_turned_read_only(image_folder, tmp_path, capsys, monkeypatch):
    """A requeued job meets its run dir remounted read-only: exit 2 with one line naming the dir,
    nothing in it changed, and its checkpoints still load (root ignores chmod, so the file system's
    refusal is simulated where the run first writes)."""
    run = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(argv) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    real = Path.write_bytes

    def read_only(self, data):
        if self.parent == run or run in self.parents:
            raise OSError(30, "Read-only file system")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    capsys.readouterr()
    assert main([*argv[: -len(TINY)], "--epochs", "2", "--resume", *TINY]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(run) in line and "not writable" in line and "Read-only file system" in line
    monkeypatch.setattr(Path, "write_bytes", real)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert ckpt.latest_good_checkpoint(run / "checkpoints")[1] == []
