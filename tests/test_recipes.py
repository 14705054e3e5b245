"""Recipes beyond the seed: DiffAugment, R1, label smoothing, spectral norm, EMA, the modern preset."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY

from animegen import checkpoint_format as ckpt
from animegen import load_generator
from animegen.cli import main
from animegen.config import ModelConfig, parse_policy, preset
from animegen.networks import build_models
from animegen.training.augment import cutout, diff_augment, translation
from animegen.training.step import make_loss, train_step


def test_diffaugment_is_deterministic_differentiable_and_shape_preserving():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    policy = parse_policy("color,translation,cutout")
    a = diff_augment(x, policy, seed=1)
    assert a.shape == x.shape
    assert torch.equal(a, diff_augment(x, policy, seed=1))
    assert not torch.equal(a, diff_augment(x, policy, seed=2))
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        parse_policy("color,warp")


def test_translation_shifts_whole_pixels_and_cutout_blanks_a_quarter():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(64, 3, 1, 1) + 1
    shifted = translation(x, torch.Generator().manual_seed(0), ratio=0.25)
    values = set(shifted.unique().tolist())
    assert values <= set(range(17))  # every output pixel is an input pixel or the zero fill
    x = torch.ones(256, 3, 16, 16)
    holes = (cutout(x, torch.Generator().manual_seed(0)) == 0).float().mean().item()
    assert 0.15 < holes < 0.3  # a half-size square, partly outside the image at the borders


def _step(cfg_model, **kwargs):
    torch.manual_seed(0)
    g, d = build_models(cfg_model)
    og = torch.optim.Adam(g.parameters(), 1e-3, betas=(0.5, 0.999))
    od = torch.optim.Adam(d.parameters(), 1e-3, betas=(0.5, 0.999))
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    noise = torch.randn(8, 100, 1, 1)
    loss = kwargs.pop("loss", make_loss("bce"))
    stats = train_step(g, d, og, od, real, noise, loss, **kwargs)
    return g, d, stats


@pytest.mark.parametrize(
    "kwargs",
    [
        {"r1_weight": 10.0},
        {"augment": ("color", "translation")},
        {"loss": make_loss("bce", label_smoothing=0.1)},
        {"loss": make_loss("hinge")},
    ],
)
def test_each_switch_changes_the_update(kwargs):
    cfg = ModelConfig(arch="dcgan64", image_size=16, width=0.125, d_norm="sn")
    _, d0, s0 = _step(cfg)
    _, d1, s1 = _step(cfg, **copy.copy(kwargs))
    assert torch.isfinite(s1).all()
    diffs = [
        (a - b).abs().max().item()
        for a, b in zip(d0.state_dict().values(), d1.state_dict().values(), strict=True)
    ]
    assert max(diffs) > 1e-6


def test_spectral_norm_discriminator_has_no_batchnorm():
    _, d = build_models(ModelConfig(image_size=32, width=0.25, d_norm="sn"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert any("parametrizations" in k for k in d.state_dict())


def test_modern_preset_trains_resumes_exactly_and_samples_from_ema(image_folder, tmp_path):
    assert preset("modern").optim.ema > 0 and preset("seed").optim.ema == 0
    common = [
        "--data",
        str(image_folder),
        "--preset",
        "modern",
        "--seed",
        "4",
        "--set",
        "optim.r1_gamma=1",
        "--set",
        "optim.r1_every=2",
        "--set",
        "optim.augment=color,translation,cutout",  # the preset leaves DiffAugment off; cover it here
        *TINY,
    ]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *common, "--epochs", "2", "--run-dir", str(full)]) == 0
    assert main(["train", *common, "--epochs", "2", "--max-steps", "7", "--run-dir", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--set", "train.max_steps=none", "--quiet"]) == 0
    a, _ = ckpt.read_checkpoint(ckpt.latest_good_checkpoint(full / "checkpoints")[0])
    b, _ = ckpt.read_checkpoint(ckpt.latest_good_checkpoint(part / "checkpoints")[0])
    assert any(k.startswith("G_ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    g = load_generator(full)
    ema = {k[len("G_ema.") :]: v for k, v in a.items() if k.startswith("G_ema.")}
    assert g.config.arch == "fastgan"
    assert torch.equal(g.net.state_dict()["init.0.weight"], ema["init.0.weight"])
    assert not torch.equal(ema["init.0.weight"], a["G.init.0.weight"])
