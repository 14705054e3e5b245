"""Copies in a training folder: planted exact and near duplicates are found and named in one warning
line, --drop-duplicates trains on one face of each group (never on a copy of a held-out face), the
report is computed once per cache entry, and resume stays exact."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from checkpoint_checks import assert_identical, uninterrupted_and_resumed
from conftest import TINY
from PIL import Image, ImageEnhance

from animegen.cli import main
from animegen.data import duplicates
from animegen.data.cache import load_folder


def _faces(folder: Path, count: int, size: int = 32, seed: int = 0) -> list[Path]:
    """`count` distinct made-up faces: random blobs with a random stripe, so no two hash alike."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)).copy()
        row = rng.integers(0, size - 4)
        img[row : row + 3] = rng.integers(0, 256, size=3, dtype=np.uint8)
        path = folder / f"face_{i:03d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """30 faces, plus an exact copy of face 3 and a slightly brightened JPEG of face 7."""
    folder = tmp_path / "faces"
    paths = _faces(folder, 30)
    shutil.copy(paths[3], folder / "zz_copy_of_3.png")
    near = ImageEnhance.Brightness(Image.open(paths[7])).enhance(1.06)
    near.save(folder / "zz_near_7.jpg", quality=90)
    return folder


def test_planted_exact_and_near_copies_are_found_and_nothing_else(planted: Path, tmp_path: Path):
    images = load_folder(planted, 32, cache_root=tmp_path / "cache")
    found = duplicates.find_duplicates(images.images)
    named = lambda groups: [[images.names[r] for r in g] for g in groups]  # noqa: E731
    assert named(found.exact) == [["face_003.png", "zz_copy_of_3.png"]]
    assert named(found.near) == [["face_007.png", "zz_near_7.jpg"]]
    assert found.extra_rows() == 2


def test_a_folder_without_copies_reports_none(tmp_path: Path):
    images = load_folder(_faces(tmp_path / "faces", 30)[0].parent, 32, cache_root=tmp_path / "cache")
    found = duplicates.find_duplicates(images.images)
    assert (found.exact, found.near) == ([], [])
    assert found.warning_line(images.names, images.source) is None


def test_near_pairs_match_a_brute_force_search():
    """The banded search finds exactly the pairs within the distance that comparing all pairs finds."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, size=(40, 6)).astype(np.uint64)
    hashes = np.concatenate([base, base ^ np.bitwise_xor.reduce(flips[:, : rng.integers(1, 7)], axis=1)])
    for max_bits in (0, 2, 4, 6):
        brute = [
            (i, j)
            for i in range(len(hashes))
            for j in range(i + 1, len(hashes))
            if bin(int(hashes[i] ^ hashes[j])).count("1") <= max_bits
        ]
        assert duplicates._near_pairs(hashes, max_bits) == brute


def test_training_rows_keep_one_of_each_group_and_no_copy_of_a_held_out_face():
    found = duplicates.Duplicates(exact=[[1, 5]], near=[[2, 8, 9]])
    train = np.array([0, 1, 2, 3, 5, 6, 7, 8])
    held = np.array([4, 9])
    # 1 and 5: keep 1; 2 and 8 are near copies of held-out 9: both go.
    assert duplicates.Duplicates.training_rows(found, train, held).tolist() == [0, 1, 3, 6, 7]


def test_train_names_the_copies_in_one_warning_and_stores_the_report(planted, tmp_path, capsys, monkeypatch):
    loud = [a for a in TINY if a != "--quiet"]
    argv = ["train", "--data", str(planted), "--epochs", "1", *loud]
    assert main([*argv, "--run-dir", str(tmp_path / "a")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "duplicates" in line]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "1 exact duplicates (face_003.png = zz_copy_of_3.png)" in line
    assert "1 near duplicates" in line and "face_007.png ~ zz_near_7.jpg" in line
    assert "--drop-duplicates" in line and "2 fewer rows" in line
    # The second run reads the stored report instead of hashing the folder again.
    monkeypatch.setattr(duplicates, "find_duplicates", lambda *a: pytest.fail("hashed twice"))
    assert main([*argv, "--run-dir", str(tmp_path / "b")]) == 0
    assert "1 exact duplicates" in capsys.readouterr().err


def test_drop_duplicates_trains_on_fewer_rows_and_resumes_exactly(planted, tmp_path, capsys):
    common = ["--data", str(planted), "--drop-duplicates", "--seed", "3", *TINY]
    (expected, meta), (got, got_meta) = uninterrupted_and_resumed(common, tmp_path, epochs=2, stop=3)
    assert got_meta["iteration"] == meta["iteration"] == 2 * (30 // 8)  # 32 files, 2 copies dropped
    assert_identical(expected, got)
    assert meta["config"]["data"]["drop_duplicates"] is True
