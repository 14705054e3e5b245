"""Does a generator copy its training faces? Nearest training faces and a memorisation score.

Distances are Euclidean in the face encoder's features (metrics/face_features.py): trained on anime
faces only, with augmentations that keep a face's identity, so a re-encoded or slightly shifted copy
lands next to its original while two different characters do not, and not in Inception's ImageNet
features, which a projected discriminator can learn to satisfy.

The score follows the authenticity idea of Alaa et al. (ICML 2022): a generated face that sits closer
to a training face than real faces never trained on sit to theirs is a likely copy. Held-out faces
are split in two: half A sets the threshold (the `quantile` of A's nearest-training distances),
half B shows what a face that is not a copy scores against it (about `quantile` by construction).
`copy_share`, the share of generated faces under the threshold, reads against that baseline: near it
the generator draws faces as new as unseen real ones; far above it, it reproduces training faces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

QUANTILE = 0.05


def nearest(
    query: np.ndarray, bank: np.ndarray, k: int = 1, batch: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (n, k), ascending, and indices into `bank` of each query row's k nearest rows."""
    bank_t = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    dists, idxs = [], []
    for start in range(0, len(query), batch):
        q = torch.from_numpy(np.ascontiguousarray(query[start : start + batch], dtype=np.float32))
        d, i = torch.cdist(q, bank_t).topk(min(k, len(bank)), dim=1, largest=False)
        dists.append(d.numpy())
        idxs.append(i.numpy())
    return np.concatenate(dists), np.concatenate(idxs)


def copy_score(
    fake_f: np.ndarray, train_f: np.ndarray, held_f: np.ndarray, quantile: float = QUANTILE, seed: int = 0
) -> dict[str, Any]:
    """The memorisation score and its held-out baseline (see the module's docstring)."""
    if len(held_f) < 4:
        raise ValueError("the copy score needs at least 4 held-out faces")
    d_fake = nearest(fake_f, train_f)[0][:, 0]
    d_held = nearest(held_f, train_f)[0][:, 0]
    order = np.random.default_rng(seed).permutation(len(held_f))
    half_a, half_b = d_held[order[: len(order) // 2]], d_held[order[len(order) // 2 :]]
    threshold = float(np.quantile(half_a, quantile))
    return {
        "copy_share": float(np.mean(d_fake < threshold)),
        "copy_share_heldout": float(np.mean(half_b < threshold)),
        "copy_quantile": quantile,
        "copy_threshold": threshold,
        "nn_median_fake": float(np.median(d_fake)),
        "nn_median_heldout": float(np.median(d_held)),
        "n_train": int(len(train_f)),
    }


def write_neighbour_sheet(
    fake: torch.Tensor,
    fake_f: np.ndarray,
    train_images: np.ndarray,
    train_f: np.ndarray,
    out: Path,
    rows: int = 16,
    k: int = 3,
) -> None:
    """Rows of: a generated face, then its k nearest training faces with their distances; the
    closest matches first, so a copy shows in the top rows."""
    from PIL import Image, ImageDraw

    dist, idx = nearest(fake_f, train_f, k)
    order = np.argsort(dist[:, 0], kind="stable")[:rows]
    side = int(fake.shape[-1])
    label, pad = 12, 2
    width = (k + 1) * (side + pad) + pad + side // 4  # a gap between the generated face and its matches
    sheet = Image.new("RGB", (width, len(order) * (side + label + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, i in enumerate(order):
        y = pad + r * (side + label + pad)
        tiles = [fake[i].permute(1, 2, 0).numpy()] + [train_images[j].transpose(1, 2, 0) for j in idx[i]]
        for c, tile in enumerate(tiles):
            x = pad + c * (side + pad) + (side // 4 if c else 0)
            sheet.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, y))
            text = "generated" if c == 0 else f"d={dist[i, c - 1]:.1f}"
            draw.text((x + 1, y + side), text, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
