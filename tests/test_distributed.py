"""torchrun + DDP on CPU (gloo): a 2-process run trains and checkpoints; with synchronised
BatchNorm it takes the same step as one process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY

from animegen import checkpoint_format as ckpt

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def _run(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", ANIMEGEN_CACHE=str(tmp_path / "cache"))
    out = subprocess.run(
        [sys.executable, "-m", "animegen", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    # A failing rank's own error comes first; torchrun's summary of it fills the end.
    assert out.returncode == 0, out.stderr[:3000] + "\n...\n" + out.stderr[-1000:]
    return out


def _final(run_dir):
    path, _ = ckpt.latest_good_checkpoint(run_dir / "checkpoints")
    return ckpt.read_checkpoint(path)


def test_two_processes_train_and_checkpoint(image_folder, tmp_path):
    run = tmp_path / "ddp"
    out = _run(
        ["--data", str(image_folder), "--nproc", "2", "--max-steps", "3", "--run-dir", str(run), *TINY],
        tmp_path,
    )
    tensors, meta = _final(run)
    assert meta["iteration"] == 3 and meta["config"]["train"]["batch_size"] == 8
    assert len(ckpt.list_checkpoints(run / "checkpoints")) == 1
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("G."))
    assert (run / "log.jsonl").read_text().count("\n") >= 1
    assert "Traceback" not in out.stderr


def test_two_processes_train_a_d_whose_decoder_sees_real_images_only(image_folder, tmp_path):
    # The decoder sits out D's forward on fakes; DDP has to be told, or the next step hangs.
    run = tmp_path / "ddp-recon"
    args = ["--data", str(image_folder), "--nproc", "2", "--max-steps", "3", "--run-dir", str(run)]
    _run([*args, "--preset", "modern", *TINY, "--set", "model.d_recon=true"], tmp_path)
    tensors, meta = _final(run)
    assert meta["iteration"] == 3
    decoder = [v for k, v in tensors.items() if k.startswith("D.decoder.")]
    assert decoder and all(torch.isfinite(v).all() for v in decoder)


def test_two_processes_with_ema_checkpoint_a_calibrated_ema_generator(image_folder, tmp_path):
    # Rank 0 alone packs the checkpoint, the EMA copy's BatchNorm statistics measured for it.
    run = tmp_path / "ddp-ema"
    args = ["--data", str(image_folder), "--nproc", "2", "--max-steps", "3", "--run-dir", str(run)]
    _run([*args, *TINY, "--set", "optim.ema=0.9"], tmp_path)
    tensors, meta = _final(run)
    assert meta["iteration"] == 3 and int(tensors["ema.n_averaged"]) == 3
    ema = {k: v for k, v in tensors.items() if k.startswith("G_ema.")}
    assert ema and all(torch.isfinite(v).all() for v in ema.values())
    means = [k for k in ema if k.endswith("running_mean")]
    # Measured, not PyTorch's initial zeros or G's own training-time statistics.
    assert means and all(ema[k].abs().sum() > 0 for k in means)
    assert any(not torch.equal(ema[k], tensors["G." + k[len("G_ema.") :]]) for k in means)


def test_sync_bn_step_equals_single_process(image_folder, tmp_path):
    # fp32: bf16 (the default preset's choice on a CPU with native bf16) rounds the two layouts'
    # sums differently, far beyond this comparison's 1e-5.
    common = [
        "--data",
        str(image_folder),
        "--max-steps",
        "1",
        "--seed",
        "2",
        "--hflip",
        "--amp",
        "off",
        *TINY,
    ]
    _run([*common, "--run-dir", str(tmp_path / "one")], tmp_path)
    _run([*common, "--nproc", "2", "--sync-bn", "--run-dir", str(tmp_path / "two")], tmp_path)
    a, _ = _final(tmp_path / "one")
    b, _ = _final(tmp_path / "two")
    compared = 0
    for key, value in a.items():
        if key.startswith(("G.", "D.")) and value.is_floating_point():
            torch.testing.assert_close(b[key], value, atol=1e-5, rtol=0, msg=key)
            compared += 1
    assert compared > 10
