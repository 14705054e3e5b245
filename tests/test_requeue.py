"""Requeue-safe training: one command starts a run and continues it after any kill; a run dir with a
config but no checkpoint starts from step 0; checkpoints by wall time; SIGINT, SIGTERM and SIGUSR1
each checkpoint mid-epoch; the Python API follows the CLI's rules; one trainer per run dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkpoint_checks import assert_identical, checkpoint_weights, final_checkpoint, one_line
from conftest import TINY, write_images

import animegen
from animegen import checkpoint_format as ckpt
from animegen.cli import main
from animegen.config import build_config
from animegen.errors import UserError
from animegen.training.run_lock import RunLock

LOUD = [a for a in TINY if a != "--quiet"]


def _weights(run: Path) -> dict:
    return checkpoint_weights(ckpt.latest_good_checkpoint(run / "checkpoints")[0])[0]


def test_resume_of_a_run_with_config_but_no_checkpoint_starts_it_from_step_zero(
    image_folder, tmp_path, capsys
):
    """The issue's case: a run killed before its first checkpoint left config.json, a log row and a
    sample; --resume trains it from step 0 with the saved settings (one line says so), ends where an
    uninterrupted run ends, bit for bit, and the stale log row is gone."""
    common = ["--data", str(image_folder), "--epochs", "2", "--seed", "3", *TINY]
    full = tmp_path / "full"
    assert main(["train", *common, "--run-dir", str(full)]) == 0
    killed = tmp_path / "killed"
    (killed / "samples").mkdir(parents=True)
    cfg = build_config(None, None, {"data.path": str(image_folder), "train.epochs": 2, "train.seed": 3})
    cfg.model.image_size, cfg.model.width, cfg.train.batch_size = 16, 0.125, 8
    cfg.train.log_every, cfg.train.sample_count = 2, 16
    (killed / "config.json").write_text(cfg.to_json())
    (killed / "log.jsonl").write_text(json.dumps({"iteration": 4, "loss_D": 9.0}) + "\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(killed)]) == 0
    err = capsys.readouterr().err
    assert f"{killed}: no checkpoint yet; starting it from step 0 with its saved config.json" in err
    assert_identical(_weights(full), _weights(killed))
    rows = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert all(r.get("loss_D") != 9.0 for r in rows) and rows[-1]["iteration"] == 10


def test_the_same_command_starts_a_run_then_continues_it(image_folder, tmp_path, capsys):
    """`--run-dir R --resume` with the full command: the first time it starts R (and says so), later
    it continues R from its checkpoint; a finished run trains nothing more."""
    run = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), "--resume", *LOUD]
    assert main([*argv, "--max-steps", "2"]) == 0
    assert f"{run}: no run there yet, starting one" in capsys.readouterr().err
    assert checkpoint_weights(ckpt.list_checkpoints(run / "checkpoints")[-1])[1]["iteration"] == 2
    assert main([*argv, "--set", "train.max_steps=none"]) == 0
    assert "resumed from" in capsys.readouterr().err
    done = _weights(run)
    assert main([*argv, "--set", "train.max_steps=none"]) == 0
    assert_identical(done, _weights(run))


@pytest.mark.parametrize("how", ["new", "resume-auto", "resume-path"])
def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(image_folder, tmp_path, capsys, how):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"mine")
    argv = {
        "new": ["--run-dir", str(folder)],
        "resume-auto": ["--run-dir", str(folder), "--resume"],
        "resume-path": ["--resume", str(folder)],
    }[how]
    assert main(["train", "--data", str(image_folder), "--epochs", "1", *argv, *TINY]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(folder) in line and "not an animegen run" in line and "holiday.jpg" in line
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]


def test_a_foreign_config_json_is_refused(image_folder, tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text('{"model": {"layers": 12}}')
    assert main(["train", "--resume", str(folder)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "config.json" in line and "not an animegen run" in line


def test_python_api_starts_and_continues_by_the_cli_rules(image_folder, tmp_path):
    """animegen.train: resume=True starts then continues; --epochs may change on a restart, the
    preset, the architecture and the held-out split may not (a one-line UserError naming them)."""
    run = tmp_path / "run"
    tiny = {
        "model.image_size": 16,
        "model.width": 0.125,
        "train.batch_size": 8,
        "train.log_every": 2,
        "train.sample_count": 16,
        "train.epochs": 1,
    }
    first = animegen.train(data=image_folder, run_dir=run, resume=True, overrides=tiny)
    assert first["position"].iteration == 5
    more = animegen.train(data=image_folder, run_dir=run, resume=True, overrides={**tiny, "train.epochs": 2})
    assert more["position"].iteration == 10
    for kwargs, needle in (
        ({"preset": "seed"}, "trained with --preset default, cannot continue as --preset seed"),
        ({"overrides": {"model.width": 0.25}}, "model.width=0.125, cannot resume with model.width=0.25"),
        ({"overrides": {"data.holdout": 0.2}}, "a run keeps its held-out split"),
    ):
        with pytest.raises(UserError) as e:
            animegen.train(run_dir=run, resume=True, **kwargs)
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_minutes_writes_checkpoints_mid_epoch_without_changing_the_run(image_folder, tmp_path):
    """A wall-time checkpoint every ~0 minutes lands mid-epoch (at log rows) and leaves the run's
    result bit for bit what it is without them; keep_checkpoints prunes them like any other."""
    common = ["--data", str(image_folder), "--epochs", "2", "--seed", "5", *TINY]
    plain = tmp_path / "plain"
    assert main(["train", *common, "--run-dir", str(plain), "--checkpoint-minutes", "0"]) == 0
    assert [p.name for p in ckpt.list_checkpoints(plain / "checkpoints")] == [
        "ckpt_e001_i00000005.safetensors",
        "ckpt_e002_i00000010.safetensors",
    ]
    timed = tmp_path / "timed"
    argv = ["train", *common, "--run-dir", str(timed), "--checkpoint-minutes", "1e-6"]
    assert main([*argv, "--set", "train.keep_checkpoints=0"]) == 0
    names = [p.name for p in ckpt.list_checkpoints(timed / "checkpoints")]
    # Log rows every 2 iterations: 2 and 4 in epoch 1, 7 and 9 in epoch 2, besides the epochs' ends.
    assert names == [
        f"ckpt_e{e:03d}_i{i:08d}.safetensors" for e, i in ((0, 2), (0, 4), (1, 5), (1, 7), (1, 9), (2, 10))
    ]
    assert_identical(_weights(plain), _weights(timed))
    pruned = tmp_path / "pruned"
    assert main(["train", *common, "--run-dir", str(pruned), "--checkpoint-minutes", "1e-6"]) == 0
    assert [p.name for p in ckpt.list_checkpoints(pruned / "checkpoints")] == names[-3:]


def test_checkpoint_minutes_must_not_be_negative(image_folder, capsys):
    assert main(["train", "--data", str(image_folder), "--checkpoint-minutes", "-1", *TINY]) == 2
    assert "train.checkpoint_minutes must be 0 (off) or positive" in one_line(capsys.readouterr().err)


def test_a_second_trainer_on_a_run_that_trains_is_refused(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(argv) == 0
    lock = RunLock(run)
    lock.acquire()
    try:
        assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"another animegen process (pid {os.getpid()}) is training this run" in line
    finally:
        lock.release()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0


def test_temp_files_of_killed_writes_are_removed_on_restart(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *LOUD]
    assert main(argv) == 0
    stale = run / "checkpoints" / ".ckpt_e002_i00000010.safetensors.tmp4242"
    stale.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "removed 1 temp file(s)" in capsys.readouterr().err and not stale.exists()


# ------------------------------------------------------------------------------------ stop signals


def _stop_by_signal(argv: list[str], run: Path, sig: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Start `python -m animegen ARGV`, send `sig` once it has logged a row, wait for it to end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "animegen", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + 240
    while not (run / "log.jsonl").exists() or not (run / "log.jsonl").read_text().strip():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGUSR1"])
def test_each_stop_signal_checkpoints_mid_epoch_and_the_run_continues_exactly(tmp_path, sig):
    """One long epoch (100 steps): the signal stops it mid-epoch with a checkpoint at the exact
    position, exit 128 + the signal's number; the same command then finishes the run, bit for bit
    the uninterrupted run."""
    signum = getattr(signal, sig)
    data = tmp_path / "faces"
    write_images(data, 200, size=16, seed=8)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["train", "--data", str(data), "--epochs", "1", "--seed", "9", *LOUD, "--batch-size", "2"]
    full = tmp_path / "full"
    assert main([*common, "--run-dir", str(full)]) == 0
    run = tmp_path / "run"
    argv = [*common, "--run-dir", str(run), "--resume"]
    done = _stop_by_signal(argv, run, signum, env)
    assert done.returncode == 128 + signum, done.stderr.decode()
    assert b"Traceback" not in done.stderr and f"{sig}: stopping after this step".encode() in done.stderr
    _, meta = final_checkpoint(run)
    assert 0 < meta["iteration"] < 100 and meta["epochs_done"] == 0
    assert main(argv) == 0
    assert_identical(_weights(full), _weights(run))
