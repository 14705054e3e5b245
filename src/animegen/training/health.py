"""Training health checks: notice a run that has stopped learning while it is still running.

The loop feeds each log reading, and now and then a batch of samples, to a `HealthMonitor`, which
returns events for the loop to report. Nothing here prints, writes files or stops the run: the
loop decides what an event means for the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

NONFINITE = "nonfinite"
D_WINS = "d_wins"
COLLAPSE = "collapse"

STAT_KEYS = ("loss_D", "loss_G", "D_x", "D_G_z")

# Big enough to tell faces apart (hair colour, pose, where the face sits), small enough that a
# 64-image batch costs milliseconds on a CPU.
DIVERSITY_SIZE = 32


@dataclass(frozen=True)
class HealthEvent:
    kind: str  # NONFINITE, D_WINS or COLLAPSE
    message: str  # one line, ready for the console


def sample_diversity(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """Mean pairwise RMS pixel difference of a batch (N, C, H, W) of N >= 2 images, in [0, 1] units.

    uint8 images are read as 0..255 and float images as `value_range` (the generator's tanh range
    by default), so a uint8 batch and a float batch of the same pictures score the same. Images
    are area-downsampled to at most 32 px a side first: the question is whether the samples are
    different faces, not whether their fine detail differs. 0 means the images are identical;
    independent uniform noise scores about 0.4 (docs/design-notes.md).
    """
    flat = _flat(images, value_range, "sample_diversity")
    n = flat.shape[0]
    # The direct form rather than the matrix-product one, whose rounding leaves identical images
    # a small nonzero distance apart.
    dist = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    # The diagonal is zero, so the sum over all entries is the sum over the N(N-1) ordered pairs.
    return float(dist.sum()) / (n * (n - 1)) / math.sqrt(flat.shape[1])


def nearest_distances(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Each image's RMS pixel distance to its nearest other image in the batch, read as in
    `sample_diversity`. A G collapsed to a handful of faces draws every face many times, so most of
    its samples have a near twin, while the mean pairwise distance stays as high as real faces'."""
    flat = _flat(images, value_range, "nearest_distances")
    dist = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    dist.fill_diagonal_(float("inf"))
    return dist.min(dim=1).values / math.sqrt(flat.shape[1])


def _flat(images: torch.Tensor, value_range: tuple[float, float], who: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C*h*w) in [0, 1] units at <= DIVERSITY_SIZE px a side."""
    if images.ndim != 4:
        raise ValueError(f"{who} wants a (N, C, H, W) batch, got shape {tuple(images.shape)}")
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"{who} needs at least 2 images, got {n}")
    x = images.detach()
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        lo, hi = value_range
        x = (x.float() - lo) / (hi - lo)
    h, w = x.shape[-2:]
    if h > DIVERSITY_SIZE or w > DIVERSITY_SIZE:
        x = F.adaptive_avg_pool2d(x, (min(h, DIVERSITY_SIZE), min(w, DIVERSITY_SIZE)))
    return x.reshape(n, -1)


class HealthMonitor:
    """Turns log readings and sample batches into warnings about a failing GAN run.

    The defaults come from 5000-iteration runs of four presets on the demo faces:

    d_wins: D(x) above `d_x_above` and D(G(z)) below `d_g_z_below`, both as means over the
      readings of the last `window_iters` iterations. The demo preset at batch 64 without label
      smoothing, which this project saw collapse, averaged D(x) 0.96, D(G(z)) 0.035; the default
      preset, the healthy run with the strongest D, 0.92 and 0.08. Single readings are too noisy
      to judge: the bad run's readings left the region every few hundred iterations, the healthy
      one's entered it for up to 130. With one-sided label smoothing s, D's real target is 1 - s
      and D(x) stays near it, so pass a `d_x_above` below 1 - s if the check should apply there.
    collapse: the fake batch's `sample_diversity` below `collapse_fraction` of a real batch's.
      Different noise should draw different faces, nearly as unlike each other as real faces; a G
      collapsed to one or two faces scores near 0, trained runs well above. A G that has collapsed
      to a handful of faces still scores high, so a second test counts twins: samples whose nearest
      other sample is closer than `twin_fraction` of the real faces' median nearest distance. A
      share of twins of `twin_share` or more is collapse; 0.25 separates collapsed runs from
      healthy ones (docs/design-notes.md). Checks before `sample_warmup_iters` are skipped,
      because runs start below the line (an untrained G draws near-identical grey images) and
      early runs wander below it before recovering.
    nonfinite: any of the four statistics is NaN or infinite.

    d_wins and collapse warn once, then again only after the condition has cleared and come back.
    """

    def __init__(
        self,
        *,
        d_x_above: float = 0.95,
        d_g_z_below: float = 0.05,
        window_iters: int = 2000,
        collapse_fraction: float = 0.25,
        twin_fraction: float = 0.25,
        twin_share: float = 0.5,
        sample_warmup_iters: int = 2000,
    ) -> None:
        if not (0.0 < d_x_above < 1.0 and 0.0 < d_g_z_below < 1.0):
            raise ValueError("d_x_above and d_g_z_below must lie in (0, 1)")
        if window_iters < 1 or sample_warmup_iters < 0:
            raise ValueError("window_iters must be >= 1 and sample_warmup_iters >= 0")
        if not (0.0 < collapse_fraction <= 1.0 and 0.0 < twin_fraction <= 1.0 and 0.0 < twin_share <= 1.0):
            raise ValueError("collapse_fraction, twin_fraction and twin_share must lie in (0, 1]")
        self.d_x_above = d_x_above
        self.d_g_z_below = d_g_z_below
        self.window_iters = window_iters
        self.collapse_fraction = collapse_fraction
        self.twin_fraction = twin_fraction
        self.twin_share = twin_share
        self.sample_warmup_iters = sample_warmup_iters
        self._window: list[tuple[int, float, float]] = []  # (iteration, D_x, D_G_z), oldest first
        self._d_wins_fired = False
        self._collapse_fired = False
        # (fake, real) diversity of the last judged sample check, for the loop to log.
        self.last_sample_diversity: tuple[float, float] | None = None
        self.last_twin_share: float | None = None

    def observe(self, iteration: int, values: Mapping[str, float]) -> list[HealthEvent]:
        """One log reading: the means of loss_D, loss_G, D_x, D_G_z up to `iteration`.

        Other keys (images_per_s, ...) are ignored; a missing D_x or D_G_z skips the d_wins check.
        """
        stats = {k: float(values[k]) for k in STAT_KEYS if k in values}
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            named = ", ".join(f"{k}={stats[k]}" for k in bad)
            return [
                HealthEvent(
                    NONFINITE,
                    f"iteration {iteration}: {named} not finite, training has diverged; "
                    f"resume from an earlier checkpoint with a lower learning rate",
                )
            ]
        if "D_x" not in stats or "D_G_z" not in stats:
            return []
        # Readings at or after this one belong to a run that went back (resumed from an older state).
        while self._window and self._window[-1][0] >= iteration:
            self._window.pop()
        self._window.append((iteration, stats["D_x"], stats["D_G_z"]))
        # Keep the shortest tail that still reaches window_iters back.
        while len(self._window) > 1 and self._window[1][0] <= iteration - self.window_iters:
            self._window.pop(0)
        # Measured from the oldest reading kept, so one reading alone never fills the window.
        span = iteration - self._window[0][0]
        if span < self.window_iters:
            return []
        d_x = sum(r[1] for r in self._window) / len(self._window)
        d_g_z = sum(r[2] for r in self._window) / len(self._window)
        if not (d_x > self.d_x_above and d_g_z < self.d_g_z_below):
            self._d_wins_fired = False
            return []
        if self._d_wins_fired:
            return []
        self._d_wins_fired = True
        return [
            HealthEvent(
                D_WINS,
                f"iteration {iteration}: D is winning outright, D(x) {d_x:.3f} and D(G(z)) {d_g_z:.3f} "
                f"on average over the last {span} iterations, so G learns little; try "
                f"--set optim.label_smoothing=0.1 (bce loss), --preset modern, or a lower optim.lr_d",
            )
        ]

    def observe_samples(
        self, iteration: int, fake_images: torch.Tensor, real_images: torch.Tensor
    ) -> list[HealthEvent]:
        """Compare a batch of generated faces with a batch of real ones (see `sample_diversity`).

        Float batches are read as [-1, 1] and uint8 as 0..255, so G's raw output, the feeder's
        batches and uint8 samples or data can be mixed. Batches of fewer than 2 images are skipped.
        """
        if iteration < self.sample_warmup_iters or len(fake_images) < 2 or len(real_images) < 2:
            return []
        fake = sample_diversity(fake_images)
        real = sample_diversity(real_images)
        # Identical (or broken) real images leave nothing to compare against.
        if not (math.isfinite(fake) and math.isfinite(real)) or real < 1e-6:
            return []
        self.last_sample_diversity = (fake, real)
        ratio = fake / real
        typical = float(nearest_distances(real_images).median())
        twins = float((nearest_distances(fake_images) < self.twin_fraction * typical).float().mean())
        self.last_twin_share = twins
        if ratio >= self.collapse_fraction and twins < self.twin_share:
            self._collapse_fired = False
            return []
        if self._collapse_fired:
            return []
        self._collapse_fired = True
        if ratio < self.collapse_fraction:
            what = (
                f"samples look alike, diversity {fake:.3f} against {real:.3f} for real images "
                f"({ratio:.0%}, warning below {self.collapse_fraction:.0%})"
            )
        else:
            what = (
                f"{twins:.0%} of the samples have a near twin among the others (real faces: "
                f"nearest-face distance {typical:.3f}; warning at {self.twin_share:.0%})"
            )
        return [
            HealthEvent(
                COLLAPSE,
                f"iteration {iteration}: {what}, G may have collapsed to a few faces; try --preset "
                f"modern, --set optim.label_smoothing=0.1 (bce loss), or resume from an earlier checkpoint",
            )
        ]

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs, as plain JSON values (the thresholds come from the config)."""
        return {
            "window": [[it, round(d_x, 6), round(d_g_z, 6)] for it, d_x, d_g_z in self._window],
            "d_wins_fired": self._d_wins_fired,
            "collapse_fired": self._collapse_fired,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # Missing keys take the fresh values, so checkpoints from before a key existed still load.
        self._window = [(int(it), float(d_x), float(d_g_z)) for it, d_x, d_g_z in state.get("window", [])]
        self._d_wins_fired = bool(state.get("d_wins_fired", False))
        self._collapse_fired = bool(state.get("collapse_fired", False))
