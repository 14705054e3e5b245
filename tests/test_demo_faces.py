"""Tests for the procedural demo-face dataset."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from animegen.data.demo_faces import demo_face_array, draw_face, write_demo_folder


def test_draw_face_is_rgb_of_requested_size() -> None:
    image = draw_face(7, size=48)
    assert image.mode == "RGB"
    assert image.size == (48, 48)


def test_same_seed_gives_identical_pixels() -> None:
    np.testing.assert_array_equal(demo_face_array(6, 32, seed=3), demo_face_array(6, 32, seed=3))
    assert np.asarray(draw_face(11)).tobytes() == np.asarray(draw_face(11)).tobytes()


def test_different_seeds_differ() -> None:
    a = demo_face_array(4, 32, seed=0)
    b = demo_face_array(4, 32, seed=1)
    assert not np.array_equal(a, b)
    for i in range(4):
        assert not np.array_equal(a[i], b[i])


@pytest.mark.parametrize("size", [16, 32, 64, 96])
def test_shape_and_dtype(size: int) -> None:
    faces = demo_face_array(3, size)
    assert faces.shape == (3, 3, size, size)
    assert faces.dtype == np.uint8


def test_zero_count_is_empty() -> None:
    assert demo_face_array(0, 16).shape == (0, 3, 16, 16)


def test_prefix_property() -> None:
    many = demo_face_array(10, 24, seed=5)
    few = demo_face_array(4, 24, seed=5)
    np.testing.assert_array_equal(many[:4], few)


def test_array_matches_draw_face_layout() -> None:
    # The array is channels-first; face 0 of seed 0 must be draw_face's seed-0 image transposed.
    faces = demo_face_array(1, 32, seed=0)
    np.testing.assert_array_equal(faces[0], np.asarray(draw_face(0, 32)).transpose(2, 0, 1))


def test_write_demo_folder(tmp_path) -> None:
    folder = tmp_path / "nested" / "faces"
    paths = write_demo_folder(folder, 3, size=40, seed=2)
    assert [p.name for p in paths] == ["face_00000.png", "face_00001.png", "face_00002.png"]
    expected = demo_face_array(3, 40, seed=2)
    for path, face in zip(paths, expected, strict=True):
        assert path.parent == folder
        with Image.open(path) as image:
            assert image.size == (40, 40)
            assert image.mode == "RGB"
            # PNG is lossless, so the file must round-trip to exactly the array version.
            np.testing.assert_array_equal(np.asarray(image).transpose(2, 0, 1), face)


def test_faces_are_not_flat_and_differ_from_each_other() -> None:
    faces = demo_face_array(16, 64, seed=0).astype(np.float32)
    per_image_std = faces.reshape(16, -1).std(axis=1)
    assert per_image_std.min() > 20.0
    flat = faces.reshape(16, -1)
    dists = [np.abs(flat[i] - flat[j]).mean() for i in range(16) for j in range(i + 1, 16)]
    assert min(dists) > 10.0


def test_faces_vary_in_colour() -> None:
    # Mean colours should spread out: a palette collapse would make the GAN demo look like one face.
    means = demo_face_array(32, 32, seed=9).reshape(32, 3, -1).mean(axis=2)
    assert means.std(axis=0).min() > 8.0


def test_negative_arguments_rejected(tmp_path) -> None:
    with pytest.raises(ValueError):
        demo_face_array(-1)
    with pytest.raises(ValueError):
        write_demo_folder(tmp_path, -1)
    with pytest.raises(ValueError):
        draw_face(0, size=0)
