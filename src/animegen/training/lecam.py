"""LeCam regularisation of D (Tseng et al., CVPR 2021, "Regularizing Generative Adversarial
Networks under Limited Data").

With few training images D memorises them: its scores on the real faces it trains on pull away
from its scores on everything else, and G learns nothing more from it (docs/quality.md measures
this as d_gap). LeCam anchors D's scores to their own history: it penalises real scores above
the moving average of the fake scores and fake scores below the moving average of the real ones,

    R = E[relu(D(x) - a_fake)^2] + E[relu(a_real - D(G(z)))^2],

which keeps the two sides from drifting apart without capping what D can tell apart. The
averages are device tensors updated from each step's mean scores (averaged over the processes,
so every rank anchors alike), and they go into checkpoints, so a resumed run regularises exactly
as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


class LeCam:
    """The weight, the moving averages of D's mean real and fake scores, and the penalty."""

    def __init__(
        self,
        weight: float,
        decay: float,
        device: torch.device,
        mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ) -> None:
        self.weight = weight
        self.decay = decay
        self.mean = mean  # averages a tensor over the processes (identity in one)
        # Biased averages of the real and fake scores and decay**updates, for the zero-debiased
        # reading that TensorFlow's moving averages (the paper's code) use: the first anchors are
        # the first step's scores, not a blend with 0.
        self.averages = torch.tensor([0.0, 0.0, 1.0], device=device)

    def anchors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(real anchor, fake anchor, 1 once there is a step to anchor to, else 0)."""
        started = (self.averages[2] < 1).float()
        scale = 1 / (1 - self.averages[2]).clamp(min=1e-12)
        return self.averages[0] * scale, self.averages[1] * scale, started

    def real_penalty(self, out_real: torch.Tensor) -> torch.Tensor:
        """weight * E[relu(D(x) - fake anchor)^2]; 0 at the first step."""
        _, fake_anchor, started = self.anchors()
        return self.weight * started * F.relu(out_real - fake_anchor).square().mean()

    def fake_penalty(self, out_fake: torch.Tensor) -> torch.Tensor:
        """weight * E[relu(real anchor - D(G(z)))^2]; 0 at the first step."""
        real_anchor, _, started = self.anchors()
        return self.weight * started * F.relu(real_anchor - out_fake).square().mean()

    def update(self, real_score: torch.Tensor, fake_score: torch.Tensor) -> None:
        """Fold one step's mean scores into the averages (after D's update, for the next step)."""
        scores = self.mean(torch.stack([real_score.detach().float(), fake_score.detach().float()]))
        self.averages[:2].mul_(self.decay).add_(scores, alpha=1 - self.decay)
        self.averages[2].mul_(self.decay)

    def state(self) -> dict[str, torch.Tensor]:
        return {"lecam.averages": self.averages.detach().cpu()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """From a checkpoint; one written without LeCam starts the averages afresh."""
        if "lecam.averages" in tensors:
            self.averages = tensors["lecam.averages"].to(self.averages.device, torch.float32).clone()
