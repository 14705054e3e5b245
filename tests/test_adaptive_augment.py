"""Augmentation with a probability, fixed or adapted by ADA's rule: the ops reach each image with
probability p, p follows D's confidence on the real images, and a resumed run adapts exactly."""

from __future__ import annotations

import json

import pytest
import torch
from checkpoint_checks import uninterrupted_and_resumed
from conftest import TINY

from animegen.config import build_config
from animegen.errors import UserError
from animegen.training.augment import AugmentStrength, diff_augment

POLICY = ("color", "translation", "cutout")


def test_probability_one_is_diffaugment_and_zero_leaves_images_alone():
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    always = diff_augment(x, POLICY, seed=5)
    assert torch.equal(diff_augment(x, POLICY, seed=5, p=torch.tensor(1.0)), always)
    assert torch.equal(diff_augment(x, POLICY, seed=5, p=torch.tensor(0.0)), x)
    assert not torch.equal(always, x)


def test_each_op_reaches_about_p_of_the_images():
    x = torch.rand(2000, 3, 8, 8) + 1.0  # no zero pixels, so cutout always shows
    out = diff_augment(x, ("cutout",), seed=1, p=torch.tensor(0.3))
    changed = (out != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.26 < changed < 0.34, changed


def test_gradients_reach_the_images_through_chosen_and_unchosen_ones():
    x = torch.rand(8, 3, 8, 8, requires_grad=True)
    diff_augment(x, ("color", "translation"), seed=3, p=torch.tensor(0.5)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _observe(strength: AugmentStrength, signs: list[float]) -> None:
    for i, s in enumerate(signs, start=1):
        strength.observe(torch.tensor(s), i, lambda t: t)


def test_p_rises_while_d_is_too_sure_of_the_reals_and_falls_back_after():
    s = AugmentStrength(0.0, target=0.6, ada_images=1000, batch_size=10, device=torch.device("cpu"))
    _observe(s, [0.9] * 40)  # ten adjustments of 4 batches x 10 images / 1000 each
    assert s.p.item() == pytest.approx(0.4)
    _observe(s, [0.2] * 8)
    assert s.p.item() == pytest.approx(0.32)
    _observe(s, [-1.0] * 400)
    assert s.p.item() == 0.0  # clamped


def test_fixed_probability_does_not_move():
    s = AugmentStrength(0.5, target=0.0, ada_images=10, batch_size=10, device=torch.device("cpu"))
    _observe(s, [1.0] * 40)
    assert s.p.item() == 0.5 and not s.adaptive


def test_settings_are_checked():
    with pytest.raises(UserError, match="ada_target adapts optim.augment"):
        build_config("modern", sets=["optim.ada_target=0.6"])
    with pytest.raises(UserError, match="augment_p in"):
        build_config("modern", sets=["optim.augment=color", "optim.augment_p=1.5"])


ADA = [
    "--set",
    "optim.augment=color,translation,cutout",
    "--set",
    "optim.augment_p=0",
    "--set",
    "optim.ada_target=0.01",
    "--set",
    "optim.ada_images=64",
    "--set",
    "train.log_every=1",
]


def test_an_adaptive_run_logs_p_and_resumes_bit_identically(image_folder, tmp_path):
    common = ["--data", str(image_folder), "--seed", "1", "--preset", "modern", *TINY, *ADA]
    (a, meta), (b, _) = uninterrupted_and_resumed(common, tmp_path, epochs=3, stop=6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [
        k for k in a if not torch.equal(a[k], b[k])
    ]
    # Both runs went through the same probabilities, and p moved (a 0.01 target is below what a
    # D on 40 faces reaches, so it rose).
    assert a["augment.p"].item() > 0
    rows = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    p_full = [r["augment_p"] for r in rows if "augment_p" in r]
    assert p_full == [r["augment_p"] for r in resumed if "augment_p" in r]
    assert len(set(p_full)) > 1 and all(0 <= p <= 1 for p in p_full)
    assert meta["config"]["optim"]["ada_target"] == 0.01
