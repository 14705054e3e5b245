from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from animegen import checkpoint_format as ckpt
from animegen.best_of import NO_DISCRIMINATOR, best_of, load_discriminator
from animegen.cli import main
from animegen.config import ModelConfig
from animegen.errors import CheckpointError, UserError
from animegen.model_loading import load_generator
from animegen.networks import Discriminator, Generator, build_models
from animegen.sampling import CHUNK


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


def _handmade(path: Path, d_norm: str, with_d: bool = True) -> Path:
    """A checkpoint in the training layout (G, D, config) without training; with_d=False: G only."""
    cfg = ModelConfig(image_size=16, width=0.125, d_norm=d_norm)
    torch.manual_seed(1)
    g, d = build_models(cfg)
    tensors = ckpt.pack_state_dict("G", g.state_dict())
    if with_d:
        tensors.update(ckpt.pack_state_dict("D", d.state_dict()))
    meta = {"kind": "training" if with_d else "generator", "config": {"model": asdict(cfg)}}
    ckpt.save_checkpoint(path, tensors, meta)
    return path


def _independent_scores(source: Path, images: torch.Tensor) -> torch.Tensor:
    """D's output recomputed without animegen.best_of: read the file, build D, run it in eval mode."""
    tensors, meta = ckpt.read_checkpoint(source)
    net = Discriminator(ModelConfig(**meta["config"]["model"]))
    net.load_state_dict(ckpt.unpack_state_dict("D", tensors))
    net.eval()
    with torch.no_grad():
        return net(images.float() / 127.5 - 1.0)


def _expected_order(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


@pytest.fixture(params=["trained-bn", "sn", "none"])
def checkpoint(request, run_dir, tmp_path):
    if request.param == "trained-bn":
        return ckpt.latest_good_checkpoint(run_dir / "checkpoints")[0]
    return _handmade(tmp_path / f"{request.param}.safetensors", request.param)


@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
def test_keeps_exactly_the_top_scoring_candidates(checkpoint, bn_mode):
    gen = load_generator(checkpoint)
    disc = load_discriminator(checkpoint)
    before = {k: v.clone() for k, v in disc.net.state_dict().items()}
    candidates, n = CHUNK + 30, 12  # more than one chunk, so the running top-n is merged across chunks
    images, scores, indices = best_of(gen, disc, n, candidates, seed=3, bn_mode=bn_mode)

    everything = gen.sample(candidates, seed=3, bn_mode=bn_mode)
    expected_scores = _independent_scores(checkpoint, everything)
    expected = _expected_order(expected_scores)[:n]
    assert images.dtype == torch.uint8 and images.shape == (n, 3, 16, 16)
    assert indices.tolist() == expected.tolist()
    assert not torch.equal(indices, torch.arange(n)), "the test needs a ranking that differs from plain order"
    assert torch.equal(images, everything[indices])
    torch.testing.assert_close(scores, expected_scores[indices])
    assert torch.all(scores[:-1] >= scores[1:])
    # Nothing outside the kept set scores higher than the lowest kept face.
    rest = torch.ones(candidates, dtype=torch.bool)
    rest[indices] = False
    assert torch.all(expected_scores[rest] <= scores[-1])
    # Scoring leaves D's weights and buffers (BatchNorm running stats, spectral-norm u/v) alone.
    for k, v in disc.net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_keeping_all_candidates_is_a_full_ranking(checkpoint):
    gen = load_generator(checkpoint)
    disc = load_discriminator(checkpoint)
    images, scores, indices = best_of(gen, disc, 20, 20, seed=0)
    assert sorted(indices.tolist()) == list(range(20))
    expected_scores = _independent_scores(checkpoint, gen.sample(20, seed=0))
    assert indices.tolist() == _expected_order(expected_scores).tolist()


def test_candidate_i_is_plain_generations_face_i(run_dir):
    gen = load_generator(run_dir)
    disc = load_discriminator(run_dir)
    images, _, indices = best_of(gen, disc, 5, 150, seed=9)
    for img, i in zip(images, indices.tolist(), strict=True):
        # Generating exactly i + 1 faces the plain way gives this face last.
        assert torch.equal(img, gen.sample(i + 1, seed=9)[i]), i


def test_too_few_candidates(run_dir):
    gen = load_generator(run_dir)
    disc = load_discriminator(run_dir)
    with pytest.raises(UserError, match="candidates"):
        best_of(gen, disc, 5, 4)
    assert len(best_of(gen, disc, 5, 5).images) == 5


def test_generator_only_files_are_refused(tmp_path):
    g_only = _handmade(tmp_path / "g_only.safetensors", "bn", with_d=False)
    load_generator(g_only)  # the generator itself is fine
    with pytest.raises(CheckpointError, match="g_only.safetensors.*" + NO_DISCRIMINATOR):
        load_discriminator(g_only)
    torch.save(Generator(ModelConfig(image_size=16, width=0.125)).state_dict(), tmp_path / "netG_001.pth")
    with pytest.raises(CheckpointError, match="netG_001.pth.*" + NO_DISCRIMINATOR):
        load_discriminator(tmp_path / "netG_001.pth")


@pytest.mark.parametrize("name", ["g_only.safetensors", "netG_001.pth"])
def test_cli_generator_only_is_one_line_exit_2(tmp_path, capsys, name):
    path = tmp_path / name
    if name.endswith(".pth"):
        torch.save(Generator(ModelConfig(image_size=16, width=0.125)).state_dict(), path)
    else:
        _handmade(path, "bn", with_d=False)
    out = tmp_path / "best.png"
    assert main(["generate", str(path), "-n", "2", "--best-of", "4", "--grid", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and NO_DISCRIMINATOR in err
    assert not out.exists()


def test_cli_too_few_candidates_exit_2(run_dir, capsys):
    assert main(["generate", str(run_dir), "-n", "8", "--best-of", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--best-of 7" in err and "-n (8)" in err


def test_cli_end_to_end(run_dir, tmp_path, capsys):
    grid, outdir, plain = tmp_path / "best.png", tmp_path / "best", tmp_path / "plain"
    argv = ["generate", str(run_dir), "-n", "4", "--best-of", "70", "--seed", "5", "--nrow", "2"]
    assert main([*argv, "--grid", str(grid), "--outdir", str(outdir)]) == 0
    out = capsys.readouterr().out
    assert "kept the 4 best of 70 candidates" in out

    gen = load_generator(run_dir)
    disc = load_discriminator(run_dir)
    images, scores, indices = best_of(gen, disc, 4, 70, seed=5)
    assert f"{scores[0].item():.4g} down to {scores[-1].item():.4g}" in out

    with Image.open(grid) as im:
        assert im.size == (2 * 18 + 2, 2 * 18 + 2)
    files = sorted(outdir.iterdir())
    assert [f.name for f in files] == [
        f"best{r:03d}_seed5_{i:06d}.png" for r, i in enumerate(indices.tolist())
    ]
    # Each file is the kept face, and the same picture plain `generate --seed 5` writes for that index.
    assert main(["generate", str(run_dir), "-n", "70", "--seed", "5", "--outdir", str(plain)]) == 0
    for f, img, i in zip(files, images, indices.tolist(), strict=True):
        with Image.open(f) as a, Image.open(plain / f"seed5_{i:06d}.png") as b:
            pixels = np.asarray(a)
            assert np.array_equal(pixels, img.permute(1, 2, 0).numpy())
            assert np.array_equal(pixels, np.asarray(b))
