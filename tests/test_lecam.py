"""LeCam's penalty on D: its anchors are the zero-debiased moving averages of D's scores, it is
0 before there is a score to anchor to, it changes D's update from the second step on, and a
resumed run regularises exactly as an uninterrupted one."""

from __future__ import annotations

import copy

import pytest
import torch
from checkpoint_checks import uninterrupted_and_resumed
from conftest import TINY

from animegen.config import ModelConfig, build_config
from animegen.errors import UserError
from animegen.networks.fastgan import FastDiscriminator, FastGenerator
from animegen.training.lecam import LeCam
from animegen.training.step import make_loss, train_step

CPU = torch.device("cpu")


def test_no_penalty_before_the_first_scores_then_the_first_scores_are_the_anchors():
    lc = LeCam(0.5, 0.99, CPU)
    scores = torch.tensor([3.0, -2.0])
    assert lc.real_penalty(scores).item() == 0 and lc.fake_penalty(scores).item() == 0
    lc.update(torch.tensor(1.0), torch.tensor(-1.0))
    real_anchor, fake_anchor, started = lc.anchors()
    assert (real_anchor.item(), fake_anchor.item(), started.item()) == pytest.approx((1.0, -1.0, 1.0))
    # Real scores above the fake anchor and fake scores below the real anchor are penalised.
    assert lc.real_penalty(scores).item() == pytest.approx(0.5 * (16 + 0) / 2)
    assert lc.fake_penalty(scores).item() == pytest.approx(0.5 * (0 + 9) / 2)


def test_anchors_are_debiased_moving_averages():
    d = 0.9
    lc = LeCam(1.0, d, CPU)
    for real, fake in [(2.0, -2.0), (4.0, 0.0), (1.0, 1.0)]:
        lc.update(torch.tensor(real), torch.tensor(fake))
    real_anchor, fake_anchor, _ = lc.anchors()
    weights = [(1 - d) * d**2, (1 - d) * d, 1 - d]
    norm = 1 - d**3
    assert real_anchor.item() == pytest.approx(
        sum(w * v for w, v in zip(weights, [2, 4, 1], strict=True)) / norm
    )
    assert fake_anchor.item() == pytest.approx(
        sum(w * v for w, v in zip(weights, [-2, 0, 1], strict=True)) / norm
    )


def test_the_penalty_changes_d_from_its_second_step():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="fastgan", image_size=16, width=0.125)
    g, d = FastGenerator(cfg), FastDiscriminator(cfg)
    nets = [copy.deepcopy(g), copy.deepcopy(d)]
    plain = [*nets, *(torch.optim.Adam(n.parameters(), 2e-4) for n in nets)]
    regular = [g, d, torch.optim.Adam(g.parameters(), 2e-4), torch.optim.Adam(d.parameters(), 2e-4)]
    lc = LeCam(10.0, 0.99, CPU)
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    noise = torch.randn(8, 100, 1, 1)
    loss = make_loss("hinge")

    def same_d() -> bool:
        return all(
            torch.equal(a, b)
            for a, b in zip(plain[1].state_dict().values(), d.state_dict().values(), strict=True)
        )

    torch.manual_seed(1)
    train_step(*plain, real, noise, loss)
    torch.manual_seed(1)
    train_step(*regular, real, noise, loss, lecam=lc)
    assert same_d()  # nothing to anchor to at the first step
    assert lc.anchors()[2].item() == 1.0
    torch.manual_seed(2)
    train_step(*plain, real, noise, loss)
    torch.manual_seed(2)
    train_step(*regular, real, noise, loss, lecam=lc)
    assert not same_d()


def test_settings_are_checked():
    with pytest.raises(UserError, match="lecam >= 0"):
        build_config("modern", sets=["optim.lecam=-1"])
    with pytest.raises(UserError, match="lecam_decay"):
        build_config("modern", sets=["optim.lecam=0.3", "optim.lecam_decay=1"])
    with pytest.raises(UserError, match="optim.lecam"):
        build_config("modern", sets=["optim.lecam=0.3", "train.cuda_graph=on"])


def test_a_run_with_lecam_resumes_bit_identically(image_folder, tmp_path):
    common = ["--data", str(image_folder), "--seed", "1", "--preset", "modern", *TINY]
    common += ["--set", "optim.lecam=0.3"]
    (a, meta), (b, _) = uninterrupted_and_resumed(common, tmp_path, epochs=3, stop=6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [
        k for k in a if not torch.equal(a[k], b[k])
    ]
    assert a["lecam.averages"][2].item() < 1 and a["lecam.averages"][:2].abs().sum() > 0
    assert meta["config"]["optim"]["lecam"] == 0.3
