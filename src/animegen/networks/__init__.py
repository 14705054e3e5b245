"""The networks: the tutorial's DCGAN (dcgan.py), the FastGAN-style pair (fastgan.py) and the D on
frozen pretrained features (projected.py, an optional extra), and the factory that builds a
model config's pair and reads configs back from saved weights."""

from __future__ import annotations

import torch
from torch import nn

from animegen.config import ModelConfig
from animegen.errors import UserError
from animegen.networks.dcgan import BASE_WIDTHS, Discriminator, Generator, dcgan_init
from animegen.networks.fastgan import FastDiscriminator, FastGenerator

__all__ = [
    "Discriminator",
    "Generator",
    "build_discriminator",
    "build_generator",
    "build_models",
    "count_parameters",
    "dcgan_init",
    "infer_model_config",
    "normalize_state_dict_keys",
]


def build_generator(cfg: ModelConfig) -> nn.Module:
    """An untrained generator of cfg.arch (weights from PyTorch's default init)."""
    if cfg.arch == "fastgan":
        return FastGenerator(cfg)
    return Generator(cfg)


def build_discriminator(cfg: ModelConfig) -> nn.Module:
    """An untrained discriminator of cfg.arch (weights from PyTorch's default init)."""
    if cfg.d_backbone:
        from animegen.networks.projected import ProjectedDiscriminator  # needs the [projected] extra

        return ProjectedDiscriminator(cfg)
    if cfg.arch == "fastgan":
        return FastDiscriminator(cfg)
    return Discriminator(cfg)


def build_models(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """Fresh G and D; draws from torch's global RNG, so seed it first for reproducible weights."""
    g, d = build_generator(cfg), build_discriminator(cfg)
    if cfg.init == "dcgan":
        dcgan_init(g)
        dcgan_init(d)
    elif cfg.init != "default":
        raise UserError(f"model.init must be 'default' or 'dcgan', not {cfg.init!r}")
    return g, d


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def normalize_state_dict_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrappers' prefixes (DataParallel/DDP 'module.', torch.compile '_orig_mod.')."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def infer_model_config(state: dict[str, torch.Tensor]) -> ModelConfig:
    """Recover a generator's ModelConfig from its weights alone (for a bare tutorial netG_NNN.pth)."""
    state = normalize_state_dict_keys(state)
    first = state.get("layer1.0.weight")
    if first is None or first.dim() != 4:
        raise UserError("not a generator state dict (no layer1.0.weight of a transposed convolution)")
    z_dim, top = first.shape[0], first.shape[1]
    n = 1
    while f"layer{n + 1}.0.weight" in state:
        n += 1
    last = state[f"layer{n}.0.weight"]
    factor = 3 if last.shape[-1] == 5 else 2
    stages = n - 2
    image_size = 4 * 2**stages * factor
    ngf = top // 2**stages
    arch = "seed" if factor == 3 else "dcgan64"
    base = BASE_WIDTHS[arch][0]
    return ModelConfig(arch=arch, image_size=image_size, z_dim=z_dim, width=ngf / base)
