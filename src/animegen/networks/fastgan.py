"""FastGAN-style networks (Liu et al. 2021, "Towards faster and stabilized GAN training"), small enough
for a CPU.

Generator: nearest-neighbour upsampling then 3x3 convolutions with BatchNorm and GLU (no transposed
convolutions, so no checkerboard), and skip-layer excitation: a low-resolution feature map gates
the channels of one eight times larger, which carries global layout to the fine layers cheaply.
Discriminator: stride-2 blocks with a pooled 1x1 shortcut beside the main path, BatchNorm (it beat
spectral norm in this project's three-seed study, docs/quality.md), one logit per image. With
`model.d_recon` it also carries FastGAN's self-supervision: a small decoder that redraws each real
image at 24-32 px (32 at 64 px, 24 at 96 px) from D's map at twice the start side. A D that must
describe the whole face cannot win on a few telltale details alone, which is what lets it
overpower G.

Sizes 3 * 2**k start from 3x3 maps (48, 96, 192 px), the others from 4x4 (16 ... 128 px).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from animegen.config import ModelConfig
from animegen.image_sizes import layout

# Channels per map side at width 1.0; sides are matched to the nearest key at or above them.
G_CHANNELS = {4: 512, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8}
D_CHANNELS = {4: 256, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8}


def _start_side(image_size: int) -> int:
    # image_sizes.layout's rule: sizes divisible by 3 grow from a 3x3 map, the others from 4x4.
    return 3 if layout(image_size)[0] == 3 else 4


def _channels(table: dict[int, int], side: int, width: float) -> int:
    key = min(k for k in table if k >= side)
    return max(8, round(table[key] * width))


def _sides(image_size: int) -> list[int]:
    start = _start_side(image_size)
    return [start * 2**i for i in range(int(math.log2(image_size // start)) + 1)]


class SkipExcitation(nn.Module):
    """Channel gates for a large map computed from a small one (FastGAN's SLE)."""

    def __init__(self, c_small: int, c_large: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(c_small, c_large, 4, 1, 0, bias=False),
            nn.SiLU(),
            nn.Conv2d(c_large, c_large, 1, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, small: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
        return large * self.gate(small)


def _up(cin: int, cout: int) -> nn.Sequential:
    # GLU halves the channels, so the convolution makes twice the output's.
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(cin, cout * 2, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout * 2),
        nn.GLU(dim=1),
    )


class FastGenerator(nn.Module):
    """z (B, z_dim[, 1, 1]) -> image (B, 3, S, S) in [-1, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.image_size = cfg.image_size
        sides = _sides(cfg.image_size)
        chans = [_channels(G_CHANNELS, s, cfg.width) for s in sides]
        self.init = nn.Sequential(
            nn.ConvTranspose2d(cfg.z_dim, chans[0] * 2, sides[0], 1, 0, bias=False),
            nn.BatchNorm2d(chans[0] * 2),
            nn.GLU(dim=1),
        )
        self.ups = nn.ModuleList(_up(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True))
        # Each map from 8x the start side on is gated by the map an eighth its side.
        self.excite = nn.ModuleDict(
            {str(i): SkipExcitation(chans[i - 3], chans[i]) for i in range(3, len(sides))}
        )
        self.to_rgb = nn.Sequential(nn.Conv2d(chans[-1], 3, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        feats = [self.init(z)]
        for i, up in enumerate(self.ups, 1):
            x = up(feats[-1])
            gate = self.excite[str(i)] if str(i) in self.excite else None
            feats.append(gate(feats[i - 3], x) if gate is not None else x)
        return self.to_rgb(feats[-1])


class _Down(nn.Module):
    """Stride-2 main path (4x4 then 3x3 conv) averaged with a pooled 1x1 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.skip = nn.Sequential(
            nn.AvgPool2d(2),
            nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.skip(x)) * 0.5


class Decoder(nn.Module):
    """D's features (B, C, s, s) -> a small RGB image (B, 3, s * 2**ups, s * 2**ups) in [-1, 1]."""

    def __init__(self, channels: int, ups: int):
        super().__init__()
        # Channels shrink fourfold per step: a sketch of the face is enough, and it keeps the
        # decoder a small fraction of D's cost.
        chans = [max(8, channels // 4**i) for i in range(ups + 1)]
        self.ups = nn.Sequential(*(_up(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)))
        self.to_rgb = nn.Sequential(nn.Conv2d(chans[-1], 3, 3, 1, 1), nn.Tanh())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.to_rgb(self.ups(feats))


class FastDiscriminator(nn.Module):
    """image (B, 3, S, S) -> one logit per image (B,); with `reconstruct=True` also the decoder's
    redrawing of the image (model.d_recon only)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        sides = _sides(cfg.image_size)[::-1]  # S, S/2, ..., start
        chans = [_channels(D_CHANNELS, s, cfg.width) for s in sides]
        # No BatchNorm on the first layer (DCGAN paper): it would normalise away the image's colours.
        self.stem = nn.Sequential(nn.Conv2d(3, chans[1], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True))
        self.downs = nn.ModuleList(_Down(a, b) for a, b in zip(chans[1:-1], chans[2:], strict=True))
        self.head = nn.Conv2d(chans[-1], 1, sides[-1], 1, 0)
        self.decoder: Decoder | None = None
        self.decode_after = -1  # index into downs whose output the decoder reads
        if cfg.d_recon:
            # The map at twice the start side (8x8 at 64 px), or the stem's output for tiny images.
            at = sides.index(min(sides[-1] * 2, sides[1]))
            self.decode_after = at - 2  # downs[k] outputs sides[k + 2]; -1 is the stem
            ups = min(2, int(math.log2(cfg.image_size // sides[at])))
            self.decoder = Decoder(chans[at], ups)

    def forward(
        self, x: torch.Tensor, reconstruct: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        feats = x
        for i, down in enumerate(self.downs):
            x = down(x)
            if i == self.decode_after:
                feats = x
        logits = self.head(x).reshape(-1)
        if not reconstruct:
            return logits
        if self.decoder is None:
            raise ValueError("this discriminator has no decoder (train with model.d_recon)")
        return logits, self.decoder(feats)
