"""The tutorial's DCGAN pair (96 px and other sizes) and pytorch/examples' DCGAN initialisation."""

from __future__ import annotations

import torch
from torch import nn

from animegen.config import ModelConfig
from animegen.image_sizes import layout

# The tutorial's widths at width=1.0: G's last hidden layer has 128 channels, D's first has 64.
BASE_WIDTHS = {"seed": (128, 64), "dcgan64": (64, 64)}


def _outer(factor: int, transposed: bool, cin: int, cout: int, bias: bool = False) -> nn.Module:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    if factor == 3:
        return conv(cin, cout, 5, 3, 1, bias=bias)
    return conv(cin, cout, 4, 2, 1, bias=bias)


def _widths(cfg: ModelConfig) -> tuple[int, int]:
    g, d = BASE_WIDTHS[cfg.arch]
    return max(1, round(g * cfg.width)), max(1, round(d * cfg.width))


class Generator(nn.Module):
    """z (B, z_dim, 1, 1) -> image (B, 3, S, S) in [-1, 1].

    Blocks are named layer1..layerN like the tutorial's, so its netG_NNN.pth loads unchanged.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        factor, stages = layout(cfg.image_size)
        ngf, _ = _widths(cfg)
        self.z_dim = cfg.z_dim
        self.image_size = cfg.image_size
        hidden = [ngf * 2**i for i in reversed(range(stages + 1))]  # e.g. 1024, 512, 256, 128
        blocks: list[nn.Module] = [
            nn.Sequential(
                nn.ConvTranspose2d(cfg.z_dim, hidden[0], 4, 1, 0, bias=False),
                nn.BatchNorm2d(hidden[0]),
                nn.ReLU(inplace=True),
            )
        ]
        for cin, cout in zip(hidden[:-1], hidden[1:], strict=True):
            blocks.append(
                nn.Sequential(
                    nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )
            )
        blocks.append(nn.Sequential(_outer(factor, True, hidden[-1], 3), nn.Tanh()))
        for i, block in enumerate(blocks, 1):
            self.add_module(f"layer{i}", block)
        self.n_layers = len(blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        for i in range(1, self.n_layers + 1):
            z = getattr(self, f"layer{i}")(z)
        return z


class Discriminator(nn.Module):
    """image (B, 3, S, S) -> one logit per image (B,).

    The tutorial ends with Sigmoid + BCELoss; returning the logit and using BCE-with-logits is the
    same loss, computed stably, and lets other losses (hinge) use the same network.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        factor, stages = layout(cfg.image_size)
        _, ndf = _widths(cfg)
        hidden = [ndf * 2**i for i in range(stages + 1)]  # e.g. 64, 128, 256, 512
        bn = cfg.d_norm == "bn"
        # Spectral norm replaces BatchNorm (Miyato et al. 2018); without BN the convs get a bias.
        sn = nn.utils.parametrizations.spectral_norm if cfg.d_norm == "sn" else (lambda m: m)
        first: list[nn.Module] = [sn(_outer(factor, False, 3, hidden[0], bias=not bn))]
        if bn and cfg.d_first_bn:
            first.append(nn.BatchNorm2d(hidden[0]))
        first.append(nn.LeakyReLU(0.2, inplace=True))
        blocks: list[nn.Module] = [nn.Sequential(*first)]
        for cin, cout in zip(hidden[:-1], hidden[1:], strict=True):
            if bn:
                layers = [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout)]
            else:
                layers = [sn(nn.Conv2d(cin, cout, 4, 2, 1))]
            blocks.append(nn.Sequential(*layers, nn.LeakyReLU(0.2, inplace=True)))
        blocks.append(nn.Sequential(sn(nn.Conv2d(hidden[-1], 1, 4, 1, 0, bias=not bn))))
        for i, block in enumerate(blocks, 1):
            self.add_module(f"layer{i}", block)
        self.n_layers = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_layers + 1):
            x = getattr(self, f"layer{i}")(x)
        return x.reshape(-1)


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            # Under spectral norm the raw weight lives in a parametrization; init that.
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
