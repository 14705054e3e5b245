"""Images for the data-layer tests: encoders, solid and noisy pictures, and a corpus of good and
bad files (imported by test_image_*.py)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

S = 16  # output size used by most tests: small keeps the suite fast

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)
WHITE = (255, 255, 255)


# ------------------------------------------------------------------------------------ helpers


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def solid(colour, size=(32, 32), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def noise(size=(48, 40), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by a tiny IDAT: costs nothing to make."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def mean_rgb(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(3, -1).mean(axis=1)


def assert_colour(arr: np.ndarray, colour, tol: float = 12) -> None:
    assert arr.shape[0] == 3 and arr.dtype == np.uint8
    np.testing.assert_allclose(mean_rgb(arr), colour, atol=tol)


def two_colour(size, first, second, split="horizontal") -> Image.Image:
    """Left/right (or top/bottom) halves in two colours."""
    w, h = size
    im = Image.new("RGB", size, first)
    box = (w // 2, 0, w, h) if split == "horizontal" else (0, h // 2, w, h)
    im.paste(second, box)
    return im


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------ corpus

# name -> expected mean colour at size S for the good files
GOOD = {
    "good.jpg": RED,
    "good.png": GREEN,
    "good.webp": BLUE,
    "good.bmp": YELLOW,
    "good.gif": RED,
    "cmyk.jpg": RED,
    "anim.gif": RED,
    "anim.webp": GREEN,
    "rgba_clear.png": WHITE,
    "JPEG_UPPER.JPEG": BLUE,
}

# name -> expected reason (prefix) for the bad files that scan_folder lists
BAD = {
    "empty.jpg": "empty file",
    "text.jpg": "not an image",
    "trunc.jpg": "truncated",
    "trunc.png": "truncated",
    "tiny.png": "too small (1x1)",
    "bomb.png": "too large",
    "big.png": "too large (9000x8000 pixels)",
    "bigger.png": "too large (12000x10000 pixels)",
}


def make_corpus(root: Path) -> Path:
    """Good files, bad files and things scan_folder must not list (loops, FIFOs, dangling links)."""
    write(root / "good.jpg", encode(solid(RED), "JPEG", quality=95))
    write(root / "good.png", encode(solid(GREEN), "PNG"))
    write(root / "good.webp", encode(solid(BLUE), "WEBP", lossless=True))
    write(root / "good.bmp", encode(solid(YELLOW), "BMP"))
    write(root / "good.gif", encode(solid(RED).convert("P"), "GIF"))
    write(root / "JPEG_UPPER.JPEG", encode(solid(BLUE), "JPEG", quality=95))
    write(root / "cmyk.jpg", encode(solid((0, 255, 255, 0), mode="CMYK"), "JPEG", quality=95))
    frames = [solid(RED), solid(BLUE), solid(GREEN)]
    write(root / "anim.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50))
    frames = [solid(GREEN), solid(RED)]
    write(
        root / "anim.webp",
        encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True),
    )
    write(root / "rgba_clear.png", encode(solid((0, 0, 0, 0), mode="RGBA"), "PNG"))

    write(root / "empty.jpg", b"")
    write(root / "text.jpg", b"<html><body>404 not found</body></html>\n" * 4)
    jpeg = encode(noise(), "JPEG", quality=90)
    write(root / "trunc.jpg", jpeg[: len(jpeg) // 2])
    png = encode(noise(), "PNG")
    write(root / "trunc.png", png[: len(png) // 2])
    write(root / "tiny.png", encode(solid(RED, size=(1, 1)), "PNG"))
    write(root / "bomb.png", png_header_only(20000, 20000))  # Pillow itself refuses (> 2x its limit)
    write(root / "big.png", png_header_only(9000, 8000))  # over our 64 Mpx, under Pillow's limit
    write(root / "bigger.png", png_header_only(12000, 10000))  # in Pillow's warning range

    # not listed by scan_folder
    write(root / "notes.txt", b"hello")
    (root / "folder.jpg").mkdir()
    os.symlink("loop.jpg", root / "loop.jpg")  # file symlink loop
    os.symlink("does-not-exist.png", root / "dangling.png")
    os.mkfifo(root / "fifo.jpg")
    # directory symlink loops: to an ancestor and to itself
    write(root / "sub" / "deep.png", encode(solid(GREEN), "PNG"))
    os.symlink("..", root / "sub" / "up")
    os.symlink(".", root / "sub" / "here")
    os.symlink("sub", root / "sub_link")  # a second path to "sub": listed once
    return root
