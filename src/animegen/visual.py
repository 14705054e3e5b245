"""Turning generator output into pictures: uint8 conversion, grids, PNG files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (B, 3, H, W) -> uint8 (B, 3, H, W), rounding rather than truncating."""
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """uint8 (B, 3, H, W) -> one uint8 (H', W', 3) picture, `nrow` images per row."""
    b, c, h, w = images.shape
    nrow = max(1, min(nrow, b))
    rows = (b + nrow - 1) // nrow
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a PNG via a temp file, so a reader never sees half a picture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> None:
    """Save uint8 images (B, 3, H, W) as one grid PNG."""
    save_png(make_grid(images, nrow=nrow), path)
