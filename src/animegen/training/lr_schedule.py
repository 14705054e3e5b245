"""The learning rates' decay over the images a run has trained on (optim.lr_half_life).

A function of the iteration alone, so a resumed run sets the same rates as one that never stopped,
and nothing about it needs saving: an exponential decay has no horizon to know in advance, which
a run stopped by --max-minutes or a scheduler would not know.
"""

from __future__ import annotations

import torch


def lr_scale(images: int, half_life: int) -> float:
    """The factor on the base rates after `images` training images; 1 when half_life is 0 (off)."""
    if half_life <= 0:
        return 1.0
    return 0.5 ** (images / half_life)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
