"""Generator EMA: an exponential moving average of G's weights and BatchNorm statistics.

torch.optim.swa_utils.AveragedModel does the same arithmetic but compares a device-side counter
with zero on every update, which on a GPU makes the host wait for the whole step each iteration.
Here the counter stays on the host, so an update only queues kernels.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class GeneratorEMA:
    """`module` holds the averaged copy; `update_parameters(net)` folds in the current weights."""

    def __init__(self, net: nn.Module, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(net)
        self.module.requires_grad_(False)
        # A host tensor (not a Python int) so checkpoints store it like any other tensor.
        self.n_averaged = torch.zeros((), dtype=torch.long)

    def decay_at(self, n: int) -> float:
        """The decay for the n-th update, ramped up from ~0.1 (the common EMA warm-up).

        With a fixed 0.999 the average needs ~1,000 updates to forget the random initial weights,
        so for the first thousand steps samples and evaluations showed noise (seen on a GPU run of
        the modern preset: a grey grid at 600 steps). (1 + n) / (10 + n) lets it follow G early.
        """
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def _pairs(self, net: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # Buffers are averaged too, so eval-mode BatchNorm statistics follow the averaged weights.
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*net.parameters(), *net.buffers()]
        return [t.detach() for t in mine], [t.detach() for t in theirs]

    @torch.no_grad()
    def update_parameters(self, net: nn.Module) -> None:
        mine, theirs = self._pairs(net)
        n = int(self.n_averaged)
        if n == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            floats = [(a, b) for a, b in zip(mine, theirs, strict=True) if a.is_floating_point()]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1.0 - self.decay_at(n))
            for a, b in zip(mine, theirs, strict=True):
                if not a.is_floating_point():  # BatchNorm's step counter: follow the model
                    a.copy_(b)
        self.n_averaged += 1
