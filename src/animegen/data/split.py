"""The held-out part of an image folder: the same rows for every run, preset and seed on that folder.

The split is a fixed-seed permutation of the decoded rows, independent of the training seed, so
FIDs of different runs on one folder are measured against the same held-out faces, and
`animegen evaluate --holdout F` can find them again.
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 20240607


def holdout_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows), each sorted; at least one row on each side when fraction > 0."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), not {fraction}")
    rows = np.arange(n)
    if fraction == 0 or n == 0:
        return rows, rows[:0]
    k = min(max(1, round(n * fraction)), n - 1)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])
