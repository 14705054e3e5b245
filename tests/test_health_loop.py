"""The training loop acts on health events: roll back once on a non-finite loss, then stop; warn on D wins."""

from __future__ import annotations

import json

import torch
from conftest import TINY

from animegen import checkpoint_format as ckpt
from animegen.cli import main
from animegen.training import loop


def _rows(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]


def _poison(monkeypatch, at_calls: set[int]):
    """Make train_step report NaN losses on the given (1-based) calls."""
    real_step = loop.train_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        stats = real_step(*args, **kwargs)
        return stats * float("nan") if calls["n"] in at_calls else stats

    monkeypatch.setattr(loop, "train_step", step)
    return calls


def test_nonfinite_rolls_back_once_with_halved_learning_rates(image_folder, tmp_path, monkeypatch, capsys):
    # 40 images, batch 8: 5 steps per epoch; the checkpoint after epoch 1 is at iteration 5.
    calls = _poison(monkeypatch, {7})
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "2", "--run-dir", str(run), *TINY]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "rolled back to ckpt_e001_i00000005.safetensors" in err and "halved" in err
    assert calls["n"] == 7 + 5  # 7 steps, then epoch 2 again from its start
    _, meta = ckpt.read_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])
    assert meta["iteration"] == 10 and meta["health"]["rolled_back"] is True
    tensors, meta = ckpt.read_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])
    lrs = ckpt.unpack_optimizer("optD", tensors, meta["optD"])["param_groups"][0]["lr"]
    assert abs(lrs - 1e-4) < 1e-12  # 2e-4 halved, and kept in the checkpoint for a resume
    rows = _rows(run)
    assert [r["event"] for r in rows if r.get("kind") == "health"] == ["rollback"]
    train_rows = [r for r in rows if "loss_D" in r]
    assert all(r["loss_D"] == r["loss_D"] for r in train_rows)  # no NaN row survived the truncation
    assert [r["iteration"] for r in train_rows] == sorted(r["iteration"] for r in train_rows)


def test_rollback_keeps_the_clock_running(image_folder, tmp_path, monkeypatch):
    """Wall time after a roll-back counts the lost stretch once, not again from the checkpoint's."""
    _poison(monkeypatch, {7})
    clock = {"t": 0.0}

    def tick() -> float:  # a clock that only moves when read, so the arithmetic is exact
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(loop.time, "perf_counter", tick)
    run = tmp_path / "run"
    start = tick()
    args = ["train", "--data", str(image_folder), "--epochs", "2", "--run-dir", str(run), *TINY]
    assert main(args) == 0
    elapsed = tick() - start
    _, meta = ckpt.read_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])
    assert 0 < meta["wall_time"] <= elapsed


def test_second_nonfinite_stops_with_one_line(image_folder, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {7, 9})
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "2", "--run-dir", str(run), *TINY]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "again after halving the learning rates" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_nonfinite_before_any_checkpoint_stops(image_folder, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {2})
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(args) == 2
    assert "before the first checkpoint" in capsys.readouterr().err


def test_d_wins_warning_is_logged(image_folder, tmp_path, monkeypatch, capsys):
    real_step = loop.train_step

    def step(*args, **kwargs):
        stats = real_step(*args, **kwargs)
        return torch.stack([stats[0], stats[1], torch.tensor(0.999), torch.tensor(0.001), stats[4]])

    monkeypatch.setattr(loop, "train_step", step)
    original = loop.HealthMonitor
    monkeypatch.setattr(loop, "HealthMonitor", lambda **kw: original(window_iters=4, **kw))
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "2", "--run-dir", str(run), *TINY]
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "D(G(z))" in line]
    assert len(warnings) == 1
    events = [r for r in _rows(run) if r.get("kind") == "health"]
    assert [e["event"] for e in events] == ["d_wins"]
