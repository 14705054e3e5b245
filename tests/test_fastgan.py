"""The FastGAN-style networks: every supported size, skip-layer excitation, the D's one logit."""

from __future__ import annotations

import pytest
import torch

from animegen.config import ModelConfig, build_config
from animegen.errors import UserError
from animegen.image_sizes import SUPPORTED_SIZES
from animegen.networks import build_models, count_parameters
from animegen.networks.fastgan import FastDiscriminator, FastGenerator, SkipExcitation


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_every_supported_size_round_trips(size):
    g, d = build_models(ModelConfig(arch="fastgan", image_size=size, width=0.125))
    assert isinstance(g, FastGenerator) and isinstance(d, FastDiscriminator)
    with torch.no_grad():
        x = g(torch.randn(2, 100))
        assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
        assert d(x).shape == (2,)


def test_skip_excitation_gates_each_map_eight_times_the_side_of_its_source():
    g = FastGenerator(ModelConfig(arch="fastgan", image_size=64, width=0.25))
    assert sorted(g.excite) == ["3", "4"]  # 32 px gated by 4 px, 64 px by 8 px
    assert all(isinstance(m, SkipExcitation) for m in g.excite.values())
    g96 = FastGenerator(ModelConfig(arch="fastgan", image_size=96, width=0.25))
    assert len(g96.ups) == 5 and sorted(g96.excite) == ["3", "4", "5"]  # 3 -> 6 -> ... -> 96


def test_the_gates_change_the_output():
    torch.manual_seed(0)
    g = FastGenerator(ModelConfig(arch="fastgan", image_size=32, width=0.25)).eval()
    z = torch.randn(2, 100)
    with torch.no_grad():
        before = g(z)
        g.excite["3"].gate[-2].weight.zero_()  # every gate becomes sigmoid(0) = 0.5
        after = g(z)
    assert not torch.allclose(before, after)


def test_width_scales_parameters():
    small = count_parameters(FastGenerator(ModelConfig(arch="fastgan", image_size=64, width=0.25)))
    large = count_parameters(FastGenerator(ModelConfig(arch="fastgan", image_size=64, width=0.5)))
    # 3x3 convolutions grow with width squared, the first (from z) linearly: 2.7x in all
    assert 2.5 < large / small < 4


def test_discriminator_batch_norm_only():
    with pytest.raises(UserError, match="fastgan has a BatchNorm D only"):
        build_config("modern", sets=["model.d_norm=sn"])


def test_modern_preset_is_fastgan_with_hinge_and_ema():
    cfg = build_config("modern")
    assert cfg.model.arch == "fastgan" and cfg.model.d_norm == "bn"
    assert cfg.optim.loss == "hinge" and cfg.optim.ema > 0


def test_a_saved_modern_config_from_before_fastgan_keeps_its_networks():
    from animegen.config import Config
    from animegen.networks import build_generator

    old = Config.from_dict({"preset": "modern", "model": {"arch": "seed", "image_size": 32, "d_norm": "sn"}})
    old.validate()
    assert old.model.arch == "seed" and old.model.d_norm == "sn"
    assert not isinstance(build_generator(old.model), FastGenerator)
