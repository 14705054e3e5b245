"""End-to-end training through the CLI on tiny models: run dir contents, logs, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY
from PIL import Image

from animegen import checkpoint_format as ckpt
from animegen.cli import main


def _weights(run_dir):
    path, _ = ckpt.latest_good_checkpoint(run_dir / "checkpoints")
    tensors, meta = ckpt.read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(("G.", "D.", "optG.", "optD."))}, meta


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_dir_contents(image_folder, tmp_path):
    run = tmp_path / "run"
    rc = main(
        ["train", "--data", str(image_folder), "--epochs", "2", "--run-dir", str(run), "--seed", "1", *TINY]
    )
    assert rc == 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    with Image.open(run / "samples" / "epoch_001.png") as im:
        assert im.size == (4 * 18 + 2, 4 * 18 + 2)  # 16 faces of 16 px, 4 per row, 2 px padding
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 10 and rows[-1]["epoch"] == 2
    for key in ("loss_D", "loss_G", "D_x", "D_G_z", "images_per_s", "wall_time"):
        assert key in rows[0]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["image_size"] == 16 and config["data"]["path"] == str(image_folder)
    names = [p.name for p in ckpt.list_checkpoints(run / "checkpoints")]
    assert names == ["ckpt_e001_i00000005.safetensors", "ckpt_e002_i00000010.safetensors"]
    _, meta = _weights(run)
    assert meta["epochs_done"] == 2 and meta["iteration"] == 10 and meta["data_count"] == 40
    assert {"python", "numpy"} <= set(meta["rng"]) and meta["data_key"]


def test_keep_last_k_and_every_n(image_folder, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "2", "--run-dir", str(run), *TINY]
    assert main([*args, "--checkpoint-every", "2", "--set", "train.keep_checkpoints=2"]) == 0
    names = [p.name for p in ckpt.list_checkpoints(run / "checkpoints")]
    assert names == ["ckpt_e001_i00000008.safetensors", "ckpt_e002_i00000010.safetensors"]


def test_resume_after_epoch_is_bit_identical(image_folder, tmp_path):
    common = ["--data", str(image_folder), "--seed", "3", "--hflip", *TINY]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *common, "--epochs", "3", "--run-dir", str(full)]) == 0
    assert main(["train", *common, "--epochs", "1", "--run-dir", str(part)]) == 0
    # --epochs counts the total: this extends the 1-epoch run to 3.
    assert main(["train", "--resume", str(part), "--epochs", "3", "--quiet"]) == 0
    a, ma = _weights(full)
    b, mb = _weights(part)
    assert ma["iteration"] == mb["iteration"] == 15
    _assert_identical(a, b)
    log = [json.loads(line)["iteration"] for line in (part / "log.jsonl").read_text().splitlines()]
    assert log == sorted(log) and len(log) == len(set(log))


def test_resume_mid_epoch_is_bit_identical(image_folder, tmp_path):
    common = ["--data", str(image_folder), "--seed", "5", *TINY]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *common, "--epochs", "2", "--run-dir", str(full)]) == 0
    assert main(["train", *common, "--epochs", "2", "--max-steps", "3", "--run-dir", str(part)]) == 0
    _, meta = _weights(part)
    assert (meta["epoch"], meta["step"], meta["iteration"]) == (0, 3, 3)
    assert main(["train", "--resume", str(part), "--set", "train.max_steps=none", "--quiet"]) == 0
    _assert_identical(_weights(full)[0], _weights(part)[0])


def test_same_seed_same_run_different_seed_differs(image_folder, tmp_path):
    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        run = tmp_path / name
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(image_folder),
                    "--epochs",
                    "1",
                    "--seed",
                    str(seed),
                    "--run-dir",
                    str(run),
                    *TINY,
                ]
            )
            == 0
        )
        runs.append(_weights(run)[0])
    _assert_identical(runs[0], runs[1])
    assert not torch.equal(runs[0]["G.layer1.0.weight"], runs[2]["G.layer1.0.weight"])


def test_existing_run_dir_needs_resume(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY]
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("amp_flags", [["--set", "train.channels_last=true"]])
def test_speed_options_train(image_folder, tmp_path, amp_flags):
    run = tmp_path / "run"
    assert (
        main(
            ["train", "--data", str(image_folder), "--epochs", "1", "--run-dir", str(run), *TINY, *amp_flags]
        )
        == 0
    )


def test_time_budget_stops_resumes_and_leaves_evaluation_out(image_folder, tmp_path):
    run = tmp_path / "run"
    # 40 images, 10% held out, batch 8: 4 steps per epoch; the budget is checked at log rows (every 2).
    common = ["--data", str(image_folder), "--holdout", "0.1", *TINY, "--set", "train.eval_metrics=swd"]
    budget = ["--epochs", "3", "--max-minutes", "1e-6", "--eval-every", "2", "--run-dir", str(run)]
    assert main(["train", *common, *budget]) == 0
    _, meta = _weights(run)
    assert meta["iteration"] == 2  # stopped at the first check, mid-epoch, with a checkpoint
    evals = [
        r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("kind") == "eval"
    ]
    assert len(evals) == 1 and 0 < evals[0]["train_seconds"] < evals[0]["wall_time"]
    assert 0 < meta["eval_seconds"] < meta["wall_time"]
    # A resume under the same budget has nothing left to do; lifting it finishes the 3 epochs.
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert _weights(run)[1]["iteration"] == 2
    assert main(["train", "--resume", str(run), "--set", "train.max_minutes=none", "--quiet"]) == 0
    assert _weights(run)[1]["iteration"] == 12


def test_time_budget_must_be_positive(image_folder, tmp_path, capsys):
    assert main(["train", "--data", str(image_folder), *TINY, "--max-minutes", "0"]) == 2
    assert "train.max_minutes must be positive" in capsys.readouterr().err
