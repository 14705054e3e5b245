"""Compute improved precision and recall (Kynkäänniemi et al. 2019) between two feature sets.

Each set's manifold is approximated by hyperspheres around its samples with radius = distance to the
k-th nearest neighbour within the set. Precision is the fraction of fake samples inside the real
manifold (quality), recall the fraction of real samples inside the fake manifold (coverage). The paper
uses VGG-16 features; animegen feeds Inception pool features, so values are comparable between animegen
runs but not with published numbers.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["knn_radii", "manifold_coverage", "precision_recall"]


def _as_tensor(feats: np.ndarray | torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(feats) if not isinstance(feats, torch.Tensor) else feats)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-d array N x d, got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return t


def _sq_dists(x: torch.Tensor, y: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
    # ||x||^2 + ||y||^2 - 2 x.y is one matmul; float64 keeps the cancellation error far below typical
    # neighbour distances, and squared distances avoid a sqrt (comparisons are unchanged).
    return ((x * x).sum(1, keepdim=True) + y_sq[None, :] - 2.0 * (x @ y.T)).clamp_(min=0.0)


def knn_radii(feats: torch.Tensor, k: int, batch_size: int = 1024) -> torch.Tensor:
    """Squared distance from each row to its k-th nearest other row (N,), computed in row batches."""
    if not 1 <= k < feats.shape[0]:
        raise ValueError(f"k must be in 1..N-1 = 1..{feats.shape[0] - 1}, got {k}")
    sq = (feats * feats).sum(1)
    out = []
    for start in range(0, feats.shape[0], batch_size):
        d = _sq_dists(feats[start : start + batch_size], feats, sq)
        # k + 1 because every row is its own nearest neighbour at distance 0.
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def manifold_coverage(
    manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, batch_size: int = 1024
) -> float:
    """Fraction of ``queries`` within (<=) the squared radius of at least one ``manifold`` sample."""
    sq = (manifold * manifold).sum(1)
    inside = 0
    for start in range(0, queries.shape[0], batch_size):
        d = _sq_dists(queries[start : start + batch_size], manifold, sq)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


@torch.inference_mode()
def precision_recall(
    real_feats: np.ndarray | torch.Tensor,
    fake_feats: np.ndarray | torch.Tensor,
    k: int = 3,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Improved precision and recall of ``fake_feats`` w.r.t. ``real_feats`` (N x d each, N > k).

    Returns ``{"precision": p, "recall": r}``, both in [0, 1]. Memory is O(batch_size x N) per step.
    """
    dev = torch.device(device)
    real = _as_tensor(real_feats, "real_feats", dev)
    fake = _as_tensor(fake_feats, "fake_feats", dev)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    precision = manifold_coverage(real, knn_radii(real, k, batch_size), fake, batch_size)
    recall = manifold_coverage(fake, knn_radii(fake, k, batch_size), real, batch_size)
    return {"precision": precision, "recall": recall}
