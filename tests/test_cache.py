from __future__ import annotations

import os
import time

import numpy as np
import pytest
from conftest import write_images

from animegen.data.cache import load_demo, load_folder
from animegen.errors import UserError


def test_miss_then_hit(image_folder, tmp_path):
    cache = tmp_path / "c"
    first = load_folder(image_folder, 16, cache_root=cache)
    assert not first.cache_hit and len(first) == 40 and first.images.shape == (40, 3, 16, 16)
    assert first.images.dtype == np.uint8
    second = load_folder(image_folder, 16, cache_root=cache)
    assert second.cache_hit and second.key == first.key
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))


def test_hit_decodes_nothing(image_folder, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    load_folder(image_folder, 16, cache_root=cache)
    import animegen.data.cache as cache_mod

    def boom(*a, **k):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(cache_mod, "decode_all", boom)
    assert load_folder(image_folder, 16, cache_root=cache).cache_hit


def test_invalidation(image_folder, tmp_path):
    cache = tmp_path / "c"
    base = load_folder(image_folder, 16, cache_root=cache)
    # Another image size is another entry.
    assert not load_folder(image_folder, 24, cache_root=cache).cache_hit
    # A changed file (new content and mtime) misses.
    victim = sorted(image_folder.iterdir())[3]
    write_images(tmp_path / "other", 1, seed=9)
    victim.write_bytes((tmp_path / "other" / "img_0000.jpg").read_bytes())
    later = time.time() + 5
    os.utime(victim, (later, later))
    changed = load_folder(image_folder, 16, cache_root=cache)
    assert not changed.cache_hit and changed.key != base.key
    # An added file misses.
    write_images(image_folder / "sub", 1, seed=3)
    grown = load_folder(image_folder, 16, cache_root=cache)
    assert not grown.cache_hit and len(grown) == 41


def test_limit_and_bad_files(image_folder, tmp_path):
    (image_folder / "broken.jpg").write_bytes(b"not really a jpeg")
    (image_folder / "empty.png").write_bytes(b"")
    got = load_folder(image_folder, 16, cache_root=tmp_path / "c")
    assert len(got) == 40 and len(got.skipped) == 2
    line = got.warning_line()
    assert "broken.jpg" in line and "empty.png" in line and "\n" not in line
    # --limit counts files in sorted order; the two bad ones sort first and are skipped.
    limited = load_folder(image_folder, 16, cache_root=tmp_path / "c", limit=7)
    assert len(limited) == 5 and len(limited.skipped) == 2


def test_empty_and_unusable_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no image files found"):
        load_folder(empty, 16, cache_root=tmp_path / "c")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"")
    (junk / "b.png").write_text("hello")
    with pytest.raises(UserError, match="none of the 2 image files could be used") as e:
        load_folder(junk, 16, cache_root=tmp_path / "c")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="missing"):
        load_folder(tmp_path / "missing", 16, cache_root=tmp_path / "c")


def test_demo_cache(tmp_path):
    a = load_demo(10, 16, cache_root=tmp_path / "c")
    b = load_demo(10, 16, cache_root=tmp_path / "c")
    assert not a.cache_hit and b.cache_hit and a.images.shape == (10, 3, 16, 16)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
