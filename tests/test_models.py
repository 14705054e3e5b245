from __future__ import annotations

import pytest
import torch

from animegen.config import ModelConfig
from animegen.errors import UserError
from animegen.networks import (
    Discriminator,
    Generator,
    build_models,
    count_parameters,
    infer_model_config,
)


@pytest.mark.parametrize(
    "arch, size, g_params, d_params",
    [
        # seed 96 px: the tutorial's own counts (ConvTranspose/Conv without bias + BatchNorm affine).
        ("seed", 96, 12_661_888, 2_767_424),
        # pytorch/examples DCGAN at 64 px, ngf=ndf=64, no BN on D's first layer.
        ("dcgan64", 64, 3_576_704, 2_765_568),
        ("seed", 64, 12_658_432, 2_765_696),
        ("dcgan64", 128, 12_786_560, 11_164_416),
    ],
)
def test_shapes_and_parameter_counts(arch, size, g_params, d_params):
    cfg = ModelConfig(arch=arch, image_size=size, d_first_bn=(arch == "seed"))
    g, d = build_models(cfg)
    assert count_parameters(g) == g_params
    assert count_parameters(d) == d_params
    with torch.no_grad():
        x = g(torch.randn(2, 100, 1, 1))
        assert x.shape == (2, 3, size, size)
        assert x.abs().max() <= 1
        assert d(x).shape == (2,)


def test_seed_layers_match_the_tutorial():
    g, d = build_models(ModelConfig())
    assert [
        tuple(m.kernel_size) + tuple(m.stride) + tuple(m.padding)
        for m in g.modules()
        if isinstance(m, torch.nn.ConvTranspose2d)
    ] == [(4, 4, 1, 1, 0, 0), (4, 4, 2, 2, 1, 1), (4, 4, 2, 2, 1, 1), (4, 4, 2, 2, 1, 1), (5, 5, 3, 3, 1, 1)]
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (convs[0].kernel_size, convs[0].stride, convs[0].padding) == ((5, 5), (3, 3), (1, 1))
    assert isinstance(d.layer1[1], torch.nn.BatchNorm2d)  # the tutorial's BN on D's first layer
    assert all(m.bias is None for m in convs)


def test_width_and_zdim():
    g = Generator(ModelConfig(image_size=64, width=0.5, z_dim=16))
    assert g.layer1[0].in_channels == 16 and g.layer1[0].out_channels == 512
    assert g(torch.randn(3, 16)).shape == (3, 3, 64, 64)


def test_dcgan_init():
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(arch="dcgan64", image_size=64, init="dcgan", d_first_bn=False))
    w = d.layer2[0].weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = g.layer1[1].weight
    assert abs(bn.mean().item() - 1) < 0.01 and bn.std().item() < 0.05
    assert len(d.layer1) == 2  # conv + LeakyReLU, no BatchNorm


def test_unsupported_size():
    with pytest.raises(UserError, match="image size 100"):
        Discriminator(ModelConfig(image_size=100))


@pytest.mark.parametrize("arch, size, width", [("seed", 96, 1.0), ("dcgan64", 64, 0.5), ("seed", 48, 0.25)])
def test_infer_config_from_weights(arch, size, width):
    cfg = ModelConfig(arch=arch, image_size=size, width=width)
    g = Generator(cfg)
    state = {"module." + k: v for k, v in g.state_dict().items()}
    got = infer_model_config(state)
    assert (got.arch, got.image_size, got.width, got.z_dim) == (arch, size, width, 100)
