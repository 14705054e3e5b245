"""Truncated latents: inside the cut, repeatable, each latent keeping its place; generate and evaluate
take them."""

from __future__ import annotations

import json

import pytest
import torch

from animegen import load_generator
from animegen.cli import main
from animegen.errors import UserError
from animegen.sampling import chunk_noise, truncated_normal


def test_truncated_normal_stays_inside_and_is_a_normal_far_out():
    g = torch.Generator().manual_seed(0)
    z = truncated_normal((20000,), 0.5, g)
    assert z.abs().max() <= 0.5 and z.abs().max() > 0.49
    wide = truncated_normal((20000,), 10.0, torch.Generator().manual_seed(0))
    assert abs(float(wide.mean())) < 0.03 and abs(float(wide.std()) - 1) < 0.03


def test_same_seed_keeps_each_latents_place():
    a, b = chunk_noise(7, 0, 16, truncation=0.5), chunk_noise(7, 0, 16, truncation=2.0)
    assert torch.equal(a, chunk_noise(7, 0, 16, truncation=0.5))
    # Quantiles of the same uniforms: same signs, same order, the cut one closer to 0.
    assert torch.equal(a.sign(), b.sign()) and (a.abs() <= b.abs() + 1e-6).all()
    assert torch.equal(chunk_noise(7, 0, 16), chunk_noise(7, 0, 16, truncation=None))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_truncation_is_refused(bad):
    with pytest.raises(UserError, match="truncation"):
        chunk_noise(0, 0, 4, truncation=bad)


def test_generate_and_evaluate_take_truncation(tiny_run, tmp_path, capsys):
    gen = load_generator(tiny_run)
    plain, cut = gen.sample(8, seed=1), gen.sample(8, seed=1, truncation=0.3)
    assert plain.shape == cut.shape and not torch.equal(plain, cut)
    grid = tmp_path / "g.png"
    assert main(["generate", str(tiny_run), "-n", "4", "--grid", str(grid), "--truncation", "0.7"]) == 0
    assert grid.exists()
    assert main(["generate", str(tiny_run), "-n", "4", "--truncation", "-1"]) == 2
    assert "truncation" in capsys.readouterr().err
    out = tmp_path / "e.json"
    faces = tiny_run.parent / "faces"
    args = ["evaluate", str(tiny_run), "--data", str(faces), "--n", "8", "--metrics", "swd", "--quiet"]
    assert main([*args, "--truncation", "0.5", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["truncation"] == 0.5
