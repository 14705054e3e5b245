"""model.d_recon: the FastGAN D's decoder redraws real images, learns to, trains, resumes and loads."""

from __future__ import annotations

import pytest
import torch
from checkpoint_checks import uninterrupted_and_resumed
from conftest import TINY

from animegen.cli import main
from animegen.config import Config, ModelConfig, build_config
from animegen.errors import UserError
from animegen.image_sizes import SUPPORTED_SIZES
from animegen.networks.fastgan import FastDiscriminator, FastGenerator
from animegen.training.step import make_loss, train_step

# From D's map at twice the start side, two upsamplings (one where the image is that small).
REDRAWN_SIDE = {16: 16, 24: 24, 32: 32, 48: 24, 64: 32, 96: 24, 128: 32, 192: 24}


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_decoder_redraws_a_small_copy_without_changing_the_logit(size):
    torch.manual_seed(0)
    d = FastDiscriminator(ModelConfig(arch="fastgan", image_size=size, width=0.125, d_recon=True)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, redrawn = d(x, reconstruct=True)
        assert torch.equal(logits, d(x))
    assert redrawn.shape == (2, 3, REDRAWN_SIDE[size], REDRAWN_SIDE[size]) and redrawn.abs().max() <= 1


def test_without_d_recon_there_is_no_decoder():
    d = FastDiscriminator(ModelConfig(arch="fastgan", image_size=32, width=0.125))
    assert d.decoder is None and not any(k.startswith("decoder.") for k in d.state_dict())
    with pytest.raises(ValueError, match="no decoder"):
        d(torch.randn(2, 3, 32, 32), reconstruct=True)


def test_d_recon_needs_the_fastgan_pair():
    with pytest.raises(UserError, match="d_recon needs model.arch=fastgan"):
        build_config("default", sets=["model.d_recon=true"])


def _redraw_error(d: FastDiscriminator, real: torch.Tensor) -> float:
    d.eval()
    with torch.no_grad():
        _, redrawn = d(real, reconstruct=True)
    d.train()
    target = torch.nn.functional.adaptive_avg_pool2d(real, redrawn.shape[-2:])
    return torch.nn.functional.mse_loss(redrawn, target).item()


def test_training_steps_teach_the_decoder_to_redraw_real_images():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="fastgan", image_size=32, width=0.25, d_recon=True)
    g, d = FastGenerator(cfg), FastDiscriminator(cfg)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    # Smooth colour blobs: something a 32 px decoder can learn to redraw in a few dozen steps.
    real = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    before = _redraw_error(d, real)
    for _ in range(40):
        train_step(g, d, opt_g, opt_d, real, torch.randn(8, 100, 1, 1), make_loss("hinge"), recon=True)
    after = _redraw_error(d, real)
    assert after < 0.5 * before, (before, after)


def test_modern_has_the_decoder_and_a_run_saved_before_the_key_resumes_without_one():
    assert build_config("modern").model.d_recon and not build_config("demo").model.d_recon
    saved = build_config("modern").to_dict()
    del saved["model"]["d_recon"]  # a modern run saved before the key existed: its D has no decoder
    assert Config.from_dict(saved).model.d_recon is False
    saved["model"]["d_recon"] = True
    assert Config.from_dict(saved).model.d_recon is True
    saved = build_config("default").to_dict()
    del saved["model"]["d_recon"]
    Config.from_dict(saved).validate()  # the seed networks never take a decoder


def test_a_modern_run_checkpoints_the_decoder_and_resumes_bit_identically(image_folder, tmp_path):
    common = ["--data", str(image_folder), "--seed", "2", "--preset", "modern", *TINY]
    (a, meta), (b, _) = uninterrupted_and_resumed(common, tmp_path)
    full = tmp_path / "full"
    assert meta["config"]["model"]["d_recon"] is True
    assert any(k.startswith("D.decoder.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out = tmp_path / "faces.png"
    # --best-of rebuilds D, decoder included, from the checkpoint.
    assert main(["generate", str(full), "-n", "4", "--best-of", "8", "--grid", str(out)]) == 0
    assert out.exists()
