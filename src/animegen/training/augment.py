"""DiffAugment (Zhao et al. 2020): differentiable colour, translation and cutout on real and fake batches.

Applied to everything D sees, in both the D and the G step, so D cannot memorise a small data set
while G still gets gradients through the augmentation. Random draws come from a CPU generator
seeded per call, so training stays exactly reproducible and resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from animegen.data.batches import upload


def _rand(g: torch.Generator, n: int, device: torch.device, *shape: int) -> torch.Tensor:
    return upload(torch.rand(n, *shape, generator=g), device)


def color(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_rand(g, n, x.device, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(g, n, x.device, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(g, n, x.device, 1, 1, 1) + 0.5) + mean


def translation(x: torch.Tensor, g: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = upload(torch.randint(-sh, sh + 1, (n,), generator=g), x.device).to(x.dtype)
    tx = upload(torch.randint(-sw, sw + 1, (n,), generator=g), x.device).to(x.dtype)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    # Whole-pixel shifts in normalised coordinates; nearest sampling keeps pixels exact, zeros fill.
    theta[:, 0, 2] = -2 * tx / w
    theta[:, 1, 2] = -2 * ty / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, g: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = upload(torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=g), x.device)
    cx = upload(torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=g), x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = (ys >= cy - ch // 2) & (ys < cy - ch // 2 + ch) & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], seed: int) -> torch.Tensor:
    """Apply the policy's ops in order with randomness drawn from `seed` alone."""
    if not policy:
        return x
    g = torch.Generator().manual_seed(seed)
    for name in policy:
        x = _OPS[name](x, g)
    return x
