"""TensorBoard events, loss.png and `animegen runs` from a tiny run."""

from __future__ import annotations

import pytest
from conftest import TINY
from PIL import Image

from animegen.cli import main


def test_tensorboard_plot_and_runs_table(image_folder, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run = tmp_path / "runs" / "tiny"
    args = [
        "train",
        "--data",
        str(image_folder),
        "--epochs",
        "2",
        "--run-dir",
        str(run),
        "--tensorboard",
        *TINY,
    ]
    assert main(args) == 0
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss_D", "train/loss_G", "train/D_x", "train/D_G_z", "train/images_per_s"} <= set(
        tags["scalars"]
    )
    assert "samples" in tags["images"] and len(acc.Images("samples")) == 2
    with Image.open(run / "loss.png") as im:
        assert im.size[0] > 500 and im.size[1] > 200
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "2/2" in out and "ckpt_e002_i00000010.safetensors" in out


def test_runs_on_empty_folder(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 0
    assert "no runs" in capsys.readouterr().out


def test_runs_on_a_missing_folder(tmp_path, monkeypatch, capsys):
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or directory" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # no runs/ yet: the bare command lists nothing, without error
    assert main(["runs"]) == 0
    assert "no runs under runs" in capsys.readouterr().out


def test_a_run_shorter_than_the_plot_interval_draws_loss_png_once(image_folder, tmp_path, monkeypatch):
    import animegen.training.monitor as monitor

    drawn = []
    real = monitor.plot_losses
    monkeypatch.setattr(monitor, "plot_losses", lambda *a: drawn.append(a) or real(*a))
    run = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--epochs", "3", "--run-dir", str(run), *TINY]) == 0
    assert len(drawn) == 1 and (run / "loss.png").exists()
