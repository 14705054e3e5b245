"""animegen.data.scan: listing a folder's image files, loops, links and odd names included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from image_corpus import BAD, GOOD, RED, encode, make_corpus, solid, write

from animegen.data.images import DataError, scan_folder

# A regression in the symlink-loop or FIFO handling would hang, not fail: bound every test.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


# ------------------------------------------------------------------------------------ scan_folder


def test_scan_lists_images_sorted_and_terminates_on_symlink_loops(corpus):
    files = scan_folder(corpus)
    rel = [f.path.relative_to(corpus).as_posix() for f in files]
    assert rel == sorted(rel)
    assert set(rel) == set(GOOD) | set(BAD) | {"sub/deep.png"}
    for f in files:
        assert f.path.is_absolute()
        st = os.stat(f.path)
        assert (f.size, f.mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_scan_keeps_hidden_and_follows_dir_symlinks(tmp_path):
    png = encode(solid(RED), "PNG")
    write(tmp_path / "real" / "a.png", png)
    write(tmp_path / ".hidden" / "b.PNG", png)
    write(tmp_path / ".c.gif", encode(solid(RED).convert("P"), "GIF"))
    os.symlink(tmp_path / "real", tmp_path / "zlink")
    rel = [f.path.relative_to(tmp_path).as_posix() for f in scan_folder(tmp_path)]
    assert rel == [".c.gif", ".hidden/b.PNG", "real/a.png"]

    # a symlinked folder reached first is listed under the symlink's path, real one not again
    tmp2 = tmp_path / "other"
    write(tmp2 / "z" / "x.png", png)
    os.symlink(tmp2 / "z", tmp2 / "a")
    assert [f.path.relative_to(tmp2).as_posix() for f in scan_folder(tmp2)] == ["a/x.png"]


def test_scan_sort_order_and_limit(tmp_path):
    png = encode(solid(RED), "PNG")
    names = ["b.png", "a/c.png", "A.png", "a.png", "a-b.png", "10.png", "9.png"]
    for n in names:
        write(tmp_path / n, png)
    rel = [f.path.relative_to(tmp_path).as_posix() for f in scan_folder(tmp_path)]
    assert rel == sorted(names)
    assert [f.path for f in scan_folder(tmp_path, limit=3)] == [f.path for f in scan_folder(tmp_path)][:3]
    assert scan_folder(tmp_path, limit=0) == []
    with pytest.raises(ValueError):
        scan_folder(tmp_path, limit=-1)


def test_scan_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        scan_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    f = write(tmp_path / "file.png", b"x")
    with pytest.raises(DataError, match="not a folder"):
        scan_folder(f)
    assert scan_folder(write(tmp_path / "empty" / "readme.txt", b"x").parent) == []


def test_scan_accepts_str_and_relative_paths(tmp_path, monkeypatch):
    write(tmp_path / "d" / "a.png", encode(solid(RED), "PNG"))
    monkeypatch.chdir(tmp_path)
    files = scan_folder("d")
    assert files[0].path == tmp_path / "d" / "a.png"


# ------------------------------------------------------------------------------------ load_image
