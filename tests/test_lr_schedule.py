"""optim.lr_half_life: both rates halve every N training images, a function of the iteration alone,
so the log shows the decayed rates and a resumed run trains exactly as an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from checkpoint_checks import uninterrupted_and_resumed
from conftest import TINY

from animegen.config import build_config
from animegen.errors import UserError
from animegen.training.lr_schedule import lr_scale, set_lr


def test_the_scale_halves_every_half_life_and_is_one_when_off():
    assert lr_scale(0, 1000) == 1.0
    assert lr_scale(1000, 1000) == pytest.approx(0.5)
    assert lr_scale(3000, 1000) == pytest.approx(0.125)
    assert lr_scale(10**9, 0) == 1.0


def test_set_lr_reaches_every_group():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.Adam([{"params": a.parameters()}, {"params": b.parameters(), "lr": 1.0}], lr=0.1)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


def test_settings_are_checked():
    with pytest.raises(UserError, match="lr_half_life must be >= 0"):
        build_config("modern", sets=["optim.lr_half_life=-5"])
    with pytest.raises(UserError, match="optim.lr_half_life"):
        build_config("modern", sets=["optim.lr_half_life=1000", "train.cuda_graph=on"])


def test_a_decaying_run_logs_its_rates_and_resumes_bit_identically(image_folder, tmp_path):
    half_life = 40
    common = ["--data", str(image_folder), "--seed", "1", "--preset", "modern", *TINY]
    common += ["--set", f"optim.lr_half_life={half_life}", "--set", "optim.lr_d=3e-4"]
    (a, meta), (b, _) = uninterrupted_and_resumed(common, tmp_path, epochs=3, stop=5)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [
        k for k in a if not torch.equal(a[k], b[k])
    ]
    # The rate of the last step taken before each row: iteration - 1 steps of 8 images before it.
    rows = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "lr_g" in r]
    assert len(rows) >= 3
    for r in rows:
        assert r["lr_g"] == pytest.approx(2e-4 * 0.5 ** ((r["iteration"] - 1) * 8 / half_life))
    assert rows[-1]["lr_g"] < 2e-4 / 2
    assert meta["config"]["optim"]["lr_half_life"] == half_life
    # D decays from its own rate: its last step's rate is in the checkpoint.
    last = rows[-1]["iteration"] - 1
    assert meta["optD"]["param_groups"][0]["lr"] == pytest.approx(3e-4 * 0.5 ** (last * 8 / half_life))
