"""DiffAugment (Zhao et al. 2020): differentiable colour, translation and cutout on real and fake batches.

Applied to everything D sees, in both the D and the G step, so D cannot memorise a small data set
while G still gets gradients through the augmentation. Random draws come from a CPU generator
seeded per call, so training stays exactly reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from animegen.data.batches import upload
from animegen.streams import AUGMENT_CHOICE, derived_seed


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


def diff_augment(
    x: torch.Tensor, policy: tuple[str, ...], seed: int, p: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply the policy's ops in order with randomness drawn from `seed` alone.

    `p` (a 0-dim tensor on x's device): each op reaches each image with this probability, as in
    ADA; None applies every op to every image, as DiffAugment does.
    """
    if not policy:
        return x
    g = torch.Generator().manual_seed(seed)
    # The choices come from a stream of their own, so the ops draw what DiffAugment's would:
    # p = 1 augments exactly as p = None.
    pick = torch.Generator().manual_seed(derived_seed(seed, AUGMENT_CHOICE)) if p is not None else None
    for name in policy:
        if pick is None:
            x = _OPS[name](x, g)
        else:
            chosen = _rand(pick, x.shape[0], x.device, 1, 1, 1) < p
            x = torch.where(chosen, _OPS[name](x, g), x)
    return x


class AugmentStrength:
    """The augmentation probability, fixed or adapted by ADA's overfitting heuristic.

    D overfits when it grows sure of the real images it trains on: ADA watches r = E[sign D(x)]
    on those (augmented) reals and every `interval` steps moves p by sign(r - target) times the
    images seen over `ada_images`. p and the running sums are tensors on the training device, so
    the step never waits for the host, and both go into checkpoints, so a resumed run adapts
    exactly as an uninterrupted one.
    """

    def __init__(
        self,
        p: float,
        target: float,
        ada_images: int,
        batch_size: int,
        device: torch.device,
        interval: int = 4,
    ):
        self.p = torch.tensor(float(p), device=device)
        self.target = target
        self.ada_images = ada_images
        self.batch_size = batch_size
        self.interval = interval
        self.sums = torch.zeros(2, device=device)  # sum of per-batch mean signs, batches

    @property
    def adaptive(self) -> bool:
        return self.target > 0

    def observe(
        self, real_sign: torch.Tensor, iteration: int, mean: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        """One step's mean sign of D on its real batch; `iteration` counts the steps done, and
        `mean` averages a tensor over the processes (identity in one)."""
        if not self.adaptive:
            return
        self.sums[0] += real_sign.float()
        self.sums[1] += 1
        if iteration % self.interval == 0:
            total, batches = mean(self.sums).unbind()
            r = total / batches.clamp(min=1)
            move = torch.sign(r - self.target) * batches * self.batch_size / self.ada_images
            self.p = (self.p + move).clamp(0.0, 1.0)
            self.sums.zero_()

    def state(self) -> dict[str, torch.Tensor]:
        return {"augment.p": self.p.detach().cpu(), "augment.sums": self.sums.detach().cpu()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """From a checkpoint; one written before this existed keeps the configured start."""
        if "augment.p" in tensors:
            self.p = tensors["augment.p"].to(self.p.device, torch.float32).reshape(())
            self.sums = tensors["augment.sums"].to(self.sums.device, torch.float32)
