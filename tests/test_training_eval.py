"""--holdout / --eval-every: held-out images are never trained on, metrics land in log.jsonl, best is kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY

from animegen import checkpoint_format as ckpt
from animegen.cli import main
from animegen.config import build_config
from animegen.data.split import holdout_split
from animegen.errors import UserError

EVAL = ["--holdout", "0.25", "--eval-every", "3", "--set", "train.eval_metrics=swd"]


def _rows(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]


def test_holdout_split_is_fixed_disjoint_and_sized():
    train, held = holdout_split(200, 0.1)
    assert len(held) == 20 and len(train) == 180
    assert not set(train) & set(held) and set(train) | set(held) == set(range(200))
    again_train, again_held = holdout_split(200, 0.1)
    assert np.array_equal(held, again_held) and np.array_equal(train, again_train)
    assert not np.array_equal(held, np.arange(180, 200))  # random rows, not the last files
    assert len(holdout_split(200, 0.0)[1]) == 0
    assert len(holdout_split(5, 0.01)[1]) == 1  # a fraction > 0 always holds something out
    with pytest.raises(ValueError):
        holdout_split(10, 1.0)


def test_eval_every_needs_a_holdout():
    with pytest.raises(UserError, match="--holdout"):
        build_config("default", overrides={"train.eval_every": 5})
    with pytest.raises(UserError, match="eval_metrics"):
        build_config("default", overrides={"data.holdout": 0.1}, sets=["train.eval_metrics=lpips"])


def test_eval_rows_and_best_checkpoint(image_folder, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "2", "--run-dir", str(run), *TINY, *EVAL]
    assert main(args) == 0
    rows = _rows(run)
    evals = [r for r in rows if r.get("kind") == "eval"]
    # 40 images, 10 held out, batch 8: 3 steps per epoch, 6 in all; evaluated at 3 and 6.
    assert [e["iteration"] for e in evals] == [3, 6]
    assert all(e["n_real"] == 10 and e["swd"] > 0 for e in evals)
    # D's scores on training and held-out faces, and their gap (overfitting shows as a growing gap).
    assert all(e["d_gap"] == pytest.approx(e["d_train"] - e["d_heldout"], abs=1e-4) for e in evals)
    assert all("loss_D" in r for r in rows if r.get("kind") != "eval")
    best_path = run / "checkpoints" / "best.safetensors"
    _, meta = ckpt.read_checkpoint(best_path)
    best = min(evals, key=lambda e: e["swd"])
    assert meta["best"]["metric"] == "swd"
    assert meta["best"]["iteration"] == best["iteration"] == meta["iteration"]
    assert meta["best"]["score"] == pytest.approx(best["swd"])
    # the best checkpoint is a full training checkpoint: generate can read it
    out = tmp_path / "best.png"
    assert main(["generate", str(best_path), "-n", "4", "--out", str(out)]) == 0
    assert out.exists()


def test_held_out_rows_are_never_trained_on(image_folder, tmp_path, monkeypatch):
    from animegen.data import batches

    seen: set[int] = set()
    original = batches.BatchFeeder.batch

    def spy(self, idx, epoch, step):
        seen.update(int(i) for i in idx)
        return original(self, idx, epoch, step)

    monkeypatch.setattr(batches.BatchFeeder, "batch", spy)
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "3", "--run-dir", str(run), *TINY, *EVAL]
    assert main(args) == 0
    _, held = holdout_split(40, 0.25)
    assert seen and not seen & set(held.tolist())


def test_resume_keeps_the_best_score(image_folder, tmp_path):
    run = tmp_path / "run"
    base = ["train", "--data", str(image_folder), "--run-dir", str(run), *TINY, *EVAL]
    assert main([*base, "--epochs", "1"]) == 0
    _, first = ckpt.read_checkpoint(run / "checkpoints" / "best.safetensors")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    newest = ckpt.list_checkpoints(run / "checkpoints")[-1]
    _, meta = ckpt.read_checkpoint(newest)
    assert meta["best"]["score"] <= first["best"]["score"]
    evals = [r for r in _rows(run) if r.get("kind") == "eval"]
    assert [e["iteration"] for e in evals] == [3, 6]


def test_evaluate_holdout_uses_the_same_rows(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY, *EVAL]
    assert main(args) == 0
    out = tmp_path / "eval.json"
    cmd = ["evaluate", str(run), "--data", str(image_folder), "--metrics", "swd", "--json", str(out)]
    assert main([*cmd, "--holdout", "0.25", "--n", "100", "--quiet"]) == 0
    assert json.loads(out.read_text())["n_real"] == 10
    assert main([*cmd, "--n", "100", "--quiet"]) == 0
    assert json.loads(out.read_text())["n_real"] == 40
    assert main([*cmd, "--holdout", "1.5", "--quiet"]) == 2
    assert "--holdout" in capsys.readouterr().err


def test_missing_inception_falls_back_to_swd_and_fd_ssl(image_folder, tmp_path, monkeypatch, capsys):
    import animegen.metrics as metrics
    from animegen.metrics import MetricsUnavailable

    def unavailable(*_a, **_k):
        raise MetricsUnavailable("the FID Inception weights are not installed")

    monkeypatch.setattr(metrics, "InceptionFeatures", unavailable)
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main([*args, "--holdout", "0.25", "--eval-every", "3"]) == 0
    assert "without FID and KID" in capsys.readouterr().err
    evals = [r for r in _rows(run) if r.get("kind") == "eval"]
    assert evals and all("swd" in e and "fd_ssl" in e and "fid" not in e for e in evals)
    # FD-SSL, which ImageNet features cannot game, picks the best checkpoint when it is measured.
    _, meta = ckpt.read_checkpoint(run / "checkpoints" / "best.safetensors")
    assert meta["best"]["metric"] == "fd_ssl"


def test_resume_does_not_replace_a_better_best_file(image_folder, tmp_path):
    """best.safetensors can be newer than the checkpoint resumed from; its score still counts."""
    run = tmp_path / "run"
    base = ["train", "--data", str(image_folder), "--run-dir", str(run), *TINY, *EVAL]
    assert main([*base, "--epochs", "1"]) == 0
    best_path = run / "checkpoints" / "best.safetensors"
    tensors, meta = ckpt.read_checkpoint(best_path)
    meta["best"] = {"metric": "swd", "score": 1e-6, "iteration": 3}  # unbeatable
    ckpt.save_checkpoint(best_path, tensors, meta)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    _, after = ckpt.read_checkpoint(best_path)
    assert after["best"]["score"] == 1e-6
    _, newest = ckpt.read_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])
    assert newest["best"]["score"] == 1e-6


@pytest.mark.parametrize("preset", ["default", "modern"])
def test_evaluating_does_not_change_training(image_folder, tmp_path, preset):
    # Sampling G and scoring D on real faces leave every weight, statistic and random stream alone.
    common = ["train", "--data", str(image_folder), "--preset", preset, "--epochs", "2", *TINY]
    common += ["--holdout", "0.25", "--set", "train.eval_metrics=swd"]
    assert main([*common, "--run-dir", str(tmp_path / "plain")]) == 0
    assert main([*common, "--eval-every", "2", "--run-dir", str(tmp_path / "evaluated")]) == 0
    (a, _), (b, _) = (
        ckpt.read_checkpoint(ckpt.list_checkpoints(tmp_path / name / "checkpoints")[-1])
        for name in ("plain", "evaluated")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
