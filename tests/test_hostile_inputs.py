"""A scraped folder full of junk, through the whole `animegen train` command (a real subprocess).

tests/test_image_decode.py covers the loader file by file; this guards what a user sees: the command
finishes (exit 0, no hang, no traceback), says in ONE warning line which files it skipped and why,
and trains on exactly the usable images.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, write_images
from PIL import Image

from animegen import checkpoint_format as ckpt


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _noise(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bilevel_bomb_png(side: int = 20000) -> bytes:
    """A real, fully decodable 1-bit side x side PNG (400 Mpx for 20000) of ~50 KB, made in well
    under a second by streaming the zlib data instead of building the image in Pillow."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    block = row * 500
    idat = b"".join(comp.compress(block) for _ in range(side // 500)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _exif_rotated_jpeg() -> bytes:
    im = Image.new("RGB", (48, 32), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return _encode(im, "JPEG", exif=exif.tobytes(), quality=90)


def _palette_png_with_transparency() -> bytes:
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    im.paste(1, (8, 8, 24, 24))
    return _encode(im, "PNG", transparency=0)


def _write_bytes_name(folder: Path, name: bytes, data: bytes) -> None:
    """Create a file whose name is not valid UTF-8 (os.open with a bytes path)."""
    fd = os.open(os.fsencode(folder) + b"/" + name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# name -> regex the skip reason must match; every one of these is listed by the scan and skipped
BAD = {
    "bad_empty.jpg": r"^empty file$",
    "bad_text.jpg": r"^not an image$",
    "bad_trunc.jpg": r"truncated",
    "bad_trunc.png": r"truncated",
    "bad_one_pixel.png": r"^too small \(1x1\)$",
    "bad_bomb.png": r"^too large \(",
    "bad_\udcff\udcfe.jpg": r"^not an image$",  # a non-UTF-8 name (bytes ff fe), surrogate-escaped
}
GOOD_PLAIN = 12  # written by conftest.write_images into good/
GOOD_ODD = [
    "odd_16bit.png",
    "odd_cmyk.jpg",
    "odd_anim.gif",
    "odd_anim.webp",
    "odd_palette_transparent.png",
    "odd_exif_rotated.jpg",
    "odd_caf\udce9.png",  # a non-UTF-8 name (latin-1 e-acute) on a good image
]


@pytest.fixture
def junk_folder(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write_images(root / "good", GOOD_PLAIN, size=24)
    good = _encode(_noise(32, 1), "PNG")
    (root / "odd_16bit.png").write_bytes(
        _encode(Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60), "PNG")
    )
    (root / "odd_cmyk.jpg").write_bytes(_encode(Image.new("CMYK", (32, 32), (0, 200, 200, 0)), "JPEG"))
    frames = [_noise(32, s) for s in range(3)]
    (root / "odd_anim.gif").write_bytes(_encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    (root / "odd_anim.webp").write_bytes(
        _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=40)
    )
    (root / "odd_palette_transparent.png").write_bytes(_palette_png_with_transparency())
    (root / "odd_exif_rotated.jpg").write_bytes(_exif_rotated_jpeg())
    _write_bytes_name(root, b"odd_caf\xe9.png", good)

    (root / "bad_empty.jpg").write_bytes(b"")
    (root / "bad_text.jpg").write_text("<html><body>404 Not Found</body></html>\n" * 8)
    jpeg, png = _encode(_noise(), "JPEG", quality=90), _encode(_noise(), "PNG")
    (root / "bad_trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "bad_trunc.png").write_bytes(png[: len(png) // 2])
    (root / "bad_one_pixel.png").write_bytes(_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"))
    t0 = time.perf_counter()
    (root / "bad_bomb.png").write_bytes(_bilevel_bomb_png())
    assert time.perf_counter() - t0 < 5, "making the bomb must stay cheap"
    _write_bytes_name(root, b"bad_\xff\xfe.jpg", b"plain text, not a JPEG\n")

    # never listed: a directory symlink loop and a file symlink to nowhere
    (root / "good" / "loop").symlink_to("..", target_is_directory=True)
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    return root


@pytest.mark.timeout(300)
def test_train_on_a_junk_folder_warns_once_and_uses_exactly_the_good_images(junk_folder, tmp_path):
    """`animegen train` on a folder of hostile files: exit 0, no traceback, one warning line naming
    the first skipped files with reasons and counting the rest, every other file skipped for the
    right reason, and the run trained on exactly the usable images (checkpoint data_count)."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("COLUMNS", None)  # what a pipe or log file gets: no terminal width to follow
    argv = [sys.executable, "-m", "animegen", "train", "--data", str(junk_folder), "--epochs", "1"]
    started = time.monotonic()
    proc = subprocess.run(
        [*argv, "--run-dir", str(run), *TINY], capture_output=True, env=env, timeout=240, check=False
    )
    seconds = time.monotonic() - started
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    # The corpus holds the same picture in several formats: the copies get their own line.
    copies = [line for line in lines if "near duplicates" in line]
    assert len(copies) == 1 and "odd_anim.gif ~ odd_anim.webp" in copies[0], err
    lines = [line for line in lines if line not in copies]
    assert len(lines) == 1, f"expected one warning line, got {len(lines)}:\n{err}"
    line = lines[0]
    n_bad, n_good = len(BAD), GOOD_PLAIN + len(GOOD_ODD)
    first_three = sorted(BAD)[:3]
    assert line.startswith(f"warning: skipped {n_bad} of {n_bad + n_good} files that are not usable images: ")
    assert line.endswith(f", and {n_bad - 3} more")
    for name in first_three:
        assert f"{name} (" in line, name
    assert line.isprintable()

    tensors_meta = ckpt.read_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])[1]
    assert tensors_meta["data_count"] == n_good
    # Every skipped file, and its reason, is recorded in the cache entry.
    (entry,) = [p for p in Path(os.environ["ANIMEGEN_CACHE"]).iterdir() if not p.name.startswith(".")]
    skipped = dict(json.loads((entry / "meta.json").read_text())["skipped"])
    assert sorted(Path(p).name for p in skipped) == sorted(BAD)
    for path, reason in skipped.items():
        pattern = BAD[Path(path).name]
        assert re.search(pattern, reason), (path, reason)
    print(
        f"\nhostile corpus: {n_bad + n_good} files ({n_bad} skipped) + 2 symlinks, train took {seconds:.0f} s"
    )


def test_evaluate_on_a_junk_folder_warns_once_and_compares_the_good_images(junk_folder, tmp_path):
    """`animegen evaluate` reads the same hostile folder: exit 0, one warning line, no traceback, and
    the real side holds exactly the usable images."""
    from animegen.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(junk_folder), "--epochs", "1", "--run-dir", str(run), *TINY]) == 0
    out = tmp_path / "eval.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [
        sys.executable,
        "-m",
        "animegen",
        "evaluate",
        str(run),
        "--data",
        str(junk_folder),
        "--n",
        "64",
        "--metrics",
        "swd",
        "--json",
        str(out),
        "--quiet",
    ]
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=240, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.strip()]) == 1
    assert json.loads(out.read_text())["n_real"] == GOOD_PLAIN + len(GOOD_ODD)
