"""Evaluation during training: FID/KID/SWD/FD-SSL of the current generator against the held-out images.

Runs on the main process every `train.eval_every` iterations. The held-out rows come from
data/split.py, so they are never trained on; their Inception features are computed once per run
(and cached beside the decoded images). The generator sampled is the EMA copy when there is one,
with BatchNorm in eval mode, as `animegen generate` samples it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from animegen import metrics as measures
from animegen.config import Config
from animegen.data.cache import ImageSet
from animegen.metrics.evaluation import DEFAULT_N_CPU, DEFAULT_N_GPU, evaluate
from animegen.metrics.face_features import FaceFeatures
from animegen.sampling import Sampler

# Which score picks the best checkpoint (lower is better): FD-SSL first, since a discriminator built
# on ImageNet features can lower Inception FID without better faces (metrics/face_features.py).
RANKING = ("fd_ssl", "fid", "swd")
KEPT = ("fid", "kid", "kid_std", "swd", "fd_ssl", "n_fake", "n_real", "seconds")
# D's mean raw score on training faces and on held-out faces: a D that memorises the training set
# scores them ever higher than faces it never saw (the overfitting StyleGAN2-ADA watches for).
D_SCORES = ("d_train", "d_heldout", "d_gap")


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    score_name: str
    score: float


class PeriodicEvaluator:
    def __init__(
        self,
        cfg: Config,
        images: ImageSet,
        held_rows: np.ndarray,
        device: torch.device,
        warn: Callable[[str], None],
        train_rows: np.ndarray | None = None,
    ):
        self.cfg = cfg
        self.device = device
        self.real = np.ascontiguousarray(images.images[held_rows])
        # As many training faces as held-out ones (a fixed draw), for D's score on each.
        self.train_real: np.ndarray | None = None
        if train_rows is not None and len(train_rows):
            pick = np.random.default_rng(0).choice(
                len(train_rows), min(len(train_rows), len(held_rows)), False
            )
            self.train_real = np.ascontiguousarray(images.images[np.sort(train_rows[pick])])
        self.data_key = f"{images.key}|holdout={cfg.data.holdout}"
        self.cache_dir = images.cache_path
        cap = DEFAULT_N_GPU if device.type == "cuda" else DEFAULT_N_CPU
        self.n = cfg.train.eval_n or min(len(self.real), cap)
        self.metrics = tuple(m.strip() for m in cfg.train.eval_metrics.split(",") if m.strip())
        self.extractor = None
        self.ruler = FaceFeatures(None, device) if "fd_ssl" in self.metrics else None
        if {"fid", "kid"} & set(self.metrics):
            try:
                self.extractor = measures.InceptionFeatures(None, device)
            except measures.MetricsUnavailable as e:
                warn(f"{e}; evaluating without FID and KID")
                self.metrics = tuple(m for m in self.metrics if m not in ("fid", "kid")) or ("swd",)
        self.score_name = next((m for m in RANKING if m in self.metrics), "")

    def __call__(self, net: nn.Module, iteration: int, d: nn.Module | None = None) -> EvalResult | None:
        """Score generator `net`; with `d` (the bare discriminator) also D's scores on real faces."""
        if not self.metrics:
            return None
        gen = Sampler(net, self.cfg.model, Path(f"<iteration {iteration}>"), self.device)
        result = evaluate(
            gen,
            self.real,
            data_key=self.data_key,
            cache_dir=self.cache_dir,
            n=self.n,
            metrics=self.metrics,
            extractor=self.extractor,
            ruler=self.ruler,
        )
        kept = {k: result[k] for k in KEPT if k in result}
        if d is not None and self.train_real is not None:
            kept.update(self.d_scores(d))
        score = float(result[self.score_name]) if self.score_name else float("nan")
        return EvalResult(kept, self.score_name, score)

    @torch.no_grad()
    def d_scores(self, d: nn.Module) -> dict[str, float]:
        """D's mean raw output on the held-out faces and on as many training faces.

        BatchNorm uses each batch's statistics, as in training, without touching its running
        statistics; everything else runs in eval mode, so spectral norm's power iteration does not
        step and the run continues exactly as it would have.
        """
        n = min(self.n, len(self.real))
        batch = self.cfg.train.batch_size
        was_training = d.training
        bns = [m for m in d.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        tracked = [m.track_running_stats for m in bns]
        d.eval()
        for m in bns:
            m.train()
            m.track_running_stats = False
        try:
            means = {}
            for name, faces in (("d_train", self.train_real[:n]), ("d_heldout", self.real[:n])):
                scores = []
                for i in range(0, n, batch):
                    x = torch.from_numpy(faces[i : i + batch]).to(self.device).float().div(127.5).sub(1.0)
                    if self.cfg.train.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    scores.append(d(x).reshape(len(x), -1).float().mean(dim=1).cpu())
                means[name] = float(torch.cat(scores).mean())
        finally:
            for m, t in zip(bns, tracked, strict=True):
                m.track_running_stats = t
            d.train(was_training)
        return {
            **{k: round(v, 5) for k, v in means.items()},
            "d_gap": round(means["d_train"] - means["d_heldout"], 5),
        }
