"""Shared fixtures: tiny image folders, a private cache dir, and one CPU thread for repeatable speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tiny models gain nothing from threads, and two OpenMP threads contending with another process on a
# 2-core machine run many times slower; one thread keeps the suite fast and its timings stable.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path_factory.mktemp("cache")))


def write_images(folder: Path, count: int, size: int = 24, seed: int = 0) -> list[Path]:
    """`count` small RGB JPEG/PNG files of smooth random colour blobs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
        p = folder / (f"img_{i:04d}.png" if i % 2 else f"img_{i:04d}.jpg")
        img.save(p)
        paths.append(p)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "faces"
    write_images(folder, 40)
    return folder


TINY = [
    "--image-size",
    "16",
    "--set",
    "model.width=0.125",
    "--batch-size",
    "8",
    "--set",
    "train.log_every=2",
    "--set",
    "train.sample_count=16",
    "--quiet",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One real 1-epoch training run of a tiny 16 px model (BatchNorm D), as `animegen train` writes it."""
    from animegen.cli import main

    root = tmp_path_factory.mktemp("tiny_run")
    folder = root / "faces"
    write_images(folder, 24)
    run = root / "run"
    assert main(["train", "--data", str(folder), "--epochs", "1", "--run-dir", str(run), *TINY]) == 0
    return run
