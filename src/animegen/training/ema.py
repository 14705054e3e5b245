"""Generator EMA: an exponential moving average of G's weights, with BatchNorm statistics of its own.

torch.optim.swa_utils.AveragedModel does the same arithmetic but compares a device-side counter
with zero on every update, which on a GPU makes the host wait for the whole step each iteration.
Here the counter stays on the host, so an update only queues kernels.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from animegen.config import ModelConfig
from animegen.networks import build_generator
from animegen.training import distributed


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
        so early samples and evaluations showed noise (docs/design-notes.md). (1 + n) / (10 + n)
        lets it follow G early.
        """
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update_parameters(self, net: nn.Module) -> None:
        # Weights only: BatchNorm statistics come from calibrate_bn, as averaging G's running
        # statistics gave statistics that fit none of the weights (see calibrate_bn).
        mine = [p.detach() for p in self.module.parameters()]
        theirs = [p.detach() for p in net.parameters()]
        n = int(self.n_averaged)
        if n == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            torch._foreach_lerp_(mine, theirs, 1.0 - self.decay_at(n))
        self.n_averaged += 1


@torch.no_grad()
def calibrate_bn(net: nn.Module, noise: torch.Tensor, batch: int = 64) -> None:
    """Set net's BatchNorm running statistics to those of its own activations over `noise`.

    An averaged generator's activations differ from those of any generator it averaged, so the
    running statistics G collected in training do not fit it, averaged or not: averaged statistics
    scored far worse than recomputed ones (docs/design-notes.md). Recomputing
    the statistics ("standing statistics", BigGAN) is what torch.optim.swa_utils.update_bn does for
    averaged weights. The result depends only on the weights and the noise, so calling it at any
    time leaves a run's trajectory, and exact resume, untouched.
    """
    from torch.optim.swa_utils import update_bn

    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        update_bn(noise.split(batch), net)


class SamplingGenerator:
    """The generator that sample grids, held-out evaluations and checkpoints' G_ema see: the EMA
    copy when there is one (its BatchNorm statistics measured on `bn_noise`), else G."""

    def __init__(
        self,
        netG: nn.Module,
        ema: GeneratorEMA | None,
        bn_noise: torch.Tensor | None,
        model: ModelConfig,
        device: torch.device,
        dist: distributed.DistInfo,
    ):
        self.netG, self.ema, self.bn_noise = netG, ema, bn_noise
        self.model, self.device, self.dist = model, device, dist
        self._calibrated_at = -1  # the EMA update count the statistics were measured at

    def net(self) -> nn.Module:
        net: nn.Module = self.ema.module if self.ema is not None else self.netG
        if self.dist.enabled:
            # Synchronised BatchNorm would wait for the other ranks: sample from a plain copy.
            plain = build_generator(self.model).to(self.device)
            plain.load_state_dict(distributed.unwrap(net).state_dict())
            net = plain
        if self.ema is not None and (self.dist.enabled or self._calibrated_at != int(self.ema.n_averaged)):
            calibrate_bn(net, self.bn_noise)
            if not self.dist.enabled:
                self._calibrated_at = int(self.ema.n_averaged)
        return net
