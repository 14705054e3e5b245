"""One GAN training iteration: the tutorial's D step then G step, with pluggable loss and autocast.

With the "bce" loss this is the reference loop body operation for operation: D sees the real
batch and the detached fake batch in two separate forward passes (so BatchNorm statistics match),
the G step reuses the same fake batch, and each optimiser steps once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from animegen.streams import derived_seed
from animegen.training.augment import diff_augment
from animegen.training.lecam import LeCam

LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GanLoss:
    """Per-side losses on D's logits."""

    d_real: LossFn
    d_fake: LossFn
    g: LossFn


# Sigmoid then BCELoss, as the tutorial computes it, rather than BCE-with-logits: the two agree
# mathematically, but Adam's first steps divide by |grad|, which turns their last-bit differences
# into visible weight differences for near-zero gradients, and the seed preset must match exactly.
def _bce_real(logits: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    return F.binary_cross_entropy(p, torch.ones_like(p))


def _bce_fake(logits: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    return F.binary_cross_entropy(p, torch.zeros_like(p))


def make_loss(name: str, label_smoothing: float = 0.0) -> GanLoss:
    """The named loss; one-sided label smoothing (Salimans et al. 2016) lowers only D's real target."""
    base = LOSSES[name]
    if not label_smoothing:
        return base
    if name != "bce":
        raise ValueError("label smoothing applies to the bce loss only")
    target = 1.0 - label_smoothing

    def d_real(logits: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        return F.binary_cross_entropy(p, torch.full_like(p, target))

    return GanLoss(d_real=d_real, d_fake=base.d_fake, g=base.g)


LOSSES = {
    # The tutorial's Sigmoid + BCELoss, with G maximising log D(G(z)) (the non-saturating form).
    "bce": GanLoss(d_real=_bce_real, d_fake=_bce_fake, g=_bce_real),
    # Hinge loss (Lim & Ye 2017; used by SAGAN/BigGAN).
    "hinge": GanLoss(
        d_real=lambda r: F.relu(1.0 - r).mean(),
        d_fake=lambda f: F.relu(1.0 + f).mean(),
        g=lambda f: -f.mean(),
    ),
}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX-BF16).

    Without either, oneDNN emulates bf16 and autocast is far slower than fp32; with one, bf16 is
    faster (docs/design-notes.md).
    """
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return False
    try:
        caps = get_capabilities()
    except RuntimeError:
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_amp(amp: str, device: torch.device) -> str:
    """ "auto" becomes bf16 where it measured faster at equal quality: a CPU with native bf16.

    There bf16 trained faster at the same quality; on a GPU it was no faster and scored worse, so
    there "auto" stays fp32 (TF32 convolutions) (docs/design-notes.md); "bf16" forces it anywhere.
    """
    if amp != "auto":
        return amp
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "off"


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if resolve_amp(amp, device) == "bf16":
        # No weight-cast cache: each autocast block here runs one network once, so the cache saves
        # nothing, and CUDA graph capture (training/graphed.py) must not keep casts across blocks.
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def train_step(
    netG: nn.Module,
    netD: nn.Module,
    optG: torch.optim.Optimizer,
    optD: torch.optim.Optimizer,
    real: torch.Tensor,
    noise: torch.Tensor,
    loss: GanLoss,
    amp: str = "off",
    d_for_g: nn.Module | None = None,
    augment: tuple[str, ...] = (),
    aug_seed: int = 0,
    aug_p: torch.Tensor | None = None,
    r1_weight: float = 0.0,
    recon: bool = False,
    lecam: LeCam | None = None,
) -> torch.Tensor:
    """Update D then G once; returns [loss_D, loss_G, D(x), D(G(z)), mean sign of D's logits on the
    real batch] as a detached device tensor (the last is what ADA watches).

    `d_for_g` is the D that the G step runs through: under DDP the bare module, since D's weights
    get no gradient there and a DDP forward would wait for a gradient reduction that never comes.
    `augment` is a DiffAugment policy applied to every batch D sees (seeded by `aug_seed`), each op
    to each image with probability `aug_p` (None: always);
    `r1_weight` > 0 adds weight * ||grad_x D(x)||^2 on the real batch (the caller makes it lazy).
    `recon` adds D's reconstruction loss on the real batch (a D built with model.d_recon).
    `lecam` adds its penalty to D's loss on each side and then moves its anchors (its own module).
    Nothing here reads a value back to the host, so on a GPU the step runs without synchronising.
    """
    d_g = d_for_g if d_for_g is not None else netD
    device = real.device
    autocast = autocast_context(device, amp)

    def aug(x: torch.Tensor, k: int) -> torch.Tensor:
        return diff_augment(x, augment, derived_seed(aug_seed, k), aug_p) if augment else x

    optD.zero_grad(set_to_none=True)
    if r1_weight:
        real = real.detach().requires_grad_(True)
    seen_real = aug(real, 0)
    with autocast:
        if recon:
            out_real, redrawn = netD(seen_real, reconstruct=True)
        else:
            out_real = netD(seen_real)
        out_real = out_real.float()
    # Taken now: under CUDA graphs (torch.compile "reduce-overhead") D's next replay reuses the
    # memory of this output.
    d_x = torch.sigmoid(out_real.detach()).mean()
    real_sign = torch.sign(out_real.detach()).mean()
    err_real = loss.d_real(out_real)
    if r1_weight:
        (grad,) = torch.autograd.grad(out_real.sum(), real, create_graph=True)
        err_real = err_real + r1_weight * grad.float().square().sum(dim=(1, 2, 3)).mean()
    if recon:
        target = F.adaptive_avg_pool2d(seen_real.detach().float(), redrawn.shape[-2:])
        err_real = err_real + F.mse_loss(redrawn.float(), target)
    if lecam is not None:
        err_real = err_real + lecam.real_penalty(out_real)
    err_real.backward()
    with autocast:
        fake = netG(noise)
        out_fake = netD(aug(fake.detach(), 1)).float()
    d_g_z = torch.sigmoid(out_fake.detach()).mean()
    err_fake = loss.d_fake(out_fake)
    if lecam is not None:
        err_fake = err_fake + lecam.fake_penalty(out_fake)
    err_fake.backward()
    optD.step()
    if lecam is not None:
        lecam.update(out_real.detach().mean(), out_fake.detach().mean())

    optG.zero_grad(set_to_none=True)
    # D's weight gradients are not needed for G's update (the next D step clears them anyway).
    d_g.requires_grad_(False)
    try:
        with autocast:
            out_g = d_g(aug(fake, 2)).float()
        err_g = loss.g(out_g)
        err_g.backward()
    finally:
        d_g.requires_grad_(True)
    optG.step()

    return torch.stack([(err_real + err_fake).detach(), err_g.detach(), d_x, d_g_z, real_sign])
