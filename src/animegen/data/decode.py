"""Decode one image file to a fixed-size RGB array, or say in a few words why it cannot be used.

Decoding rules (see :func:`load_image`):

* Content decides the format, not the extension; only JPEG, PNG, WebP, GIF and BMP decoders are
  ever used (a ``.jpg`` that is really an EPS must not start Ghostscript).
* Any colour mode becomes RGB. Transparency is composited on white. 16-bit images are scaled
  to 8 bit (``v * 255 / 65535``), not clipped.
* EXIF orientation is applied; animated GIF/WebP/APNG use their first frame.
* The shorter side is resized to ``size`` and the centre ``size x size`` square is kept.
* Images over :data:`MAX_PIXELS` are rejected from their header, before any pixel is decoded.
  Images whose shorter side is below :func:`min_image_side` are rejected: blowing a thumbnail
  up many times gives a blurry blob that would silently pollute the training set.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from animegen.data.report import BadImage, _os_reason

__all__ = ["MAX_FILE_BYTES", "MAX_PIXELS", "load_image", "min_image_side"]

#: Images with more pixels than this (64 Mpx, e.g. 8192x8192) are rejected from the header alone.
#: Decoding one costs at most ~256 MB (RGBA) and well under a second; anything bigger is either a
#: decompression bomb or a photo far larger than any face crop needs. This is below Pillow's own
#: limit (``Image.MAX_IMAGE_PIXELS``, ~89 Mpx), so normally Pillow never gets to warn.
MAX_PIXELS = 64 * 1024 * 1024

#: Files larger than this are rejected before opening: some decoders (WebP) read the whole file
#: into memory, and no image under MAX_PIXELS legitimately needs 1 GiB.
MAX_FILE_BYTES = 1024**3

# Pillow format names we are willing to decode, matched against the file content. Anything else
# (EPS, PSD, TIFF, ...) is "not an image" for us: fewer decoders means fewer ways to hang or crash.
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255)


class _Reject(Exception):
    """Internal: the file being decoded is unusable; the message is the reason."""


def min_image_side(size: int) -> int:
    """Smallest accepted shorter side for output ``size``: ``max(2, min(16, size // 4))``.

    I.e. at most 4x upscaling, but anything at least 16 px is accepted, and 1-px images never.
    """
    return max(2, min(16, size // 4))


def load_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode one file to a ``uint8`` array of shape ``(3, size, size)``, RGB.

    Raises BadImage(path, reason) for anything that is not a usable image; never anything else
    for bad input (ValueError only for a bad ``size``). Pillow's warnings are silenced while
    decoding; that changes the process-wide warning filters, so call this from one thread at a
    time and use ``decode_all(workers=...)`` for parallel decoding.
    """
    _check_size(size)
    with _quiet_pillow():
        return _load_hwc(os.fsdecode(path), size).transpose(2, 0, 1).copy()


def _try_load_hwc(path: str, size: int) -> np.ndarray | BadImage:
    try:
        return _load_hwc(path, size)
    except BadImage as e:
        return e


def _load_hwc(path: str, size: int) -> np.ndarray:
    """Decode ``path`` to (size, size, 3) uint8; every failure becomes BadImage."""
    try:
        return _load_hwc_unchecked(path, size)
    except _Reject as e:
        raise BadImage(path, str(e)) from None
    # Deliberately broad: decoders raise OSError, ValueError, SyntaxError, struct.error,
    # IndexError, TypeError, EOFError, zlib.error, MemoryError... on hostile input, and one bad
    # file must never abort a run over 100k files.
    except Exception as e:
        raise BadImage(path, _reason_for(e)) from None


def _load_hwc_unchecked(path: str, size: int) -> np.ndarray:
    # stat before open: opening a FIFO named x.jpg would block forever.
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _Reject("not a regular file")
    if st.st_size == 0:
        raise _Reject("empty file")
    if st.st_size > MAX_FILE_BYTES:
        raise _Reject(f"too large ({st.st_size / 2**20:,.0f} MiB file)")

    with open(path, "rb") as f, Image.open(f, formats=_PIL_FORMATS) as im:
        # Image.open only parsed the header: reject by size before any pixel is decoded.
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise _Reject(f"too large ({w}x{h} pixels)")
        if min(w, h) < min_image_side(size):
            raise _Reject(f"too small ({w}x{h})")
        if isinstance(im, JpegImagePlugin.JpegImageFile):
            # DCT-domain downscaling by 2/4/8 is nearly free and good quality; asking for at
            # least 2x the target on the shorter side leaves the real antialiasing to the
            # resampler below, so output quality is unchanged while big JPEGs decode much faster
            # (docs/design-notes.md).
            im.draft(None, (2 * size, 2 * size))
        # Force the full decode now, with ImageFile.LOAD_TRUNCATED_IMAGES left False, so that a
        # truncated file raises here instead of producing a half-grey image.
        im.load()
        oriented = _apply_exif_orientation(im)
        flat = _to_l_or_rgb(oriented)
        square = _resize_centre_crop(flat, size)
        if square.mode != "RGB":
            square = square.convert("RGB")
        # Still inside the with: ``square`` may be ``im`` itself, whose core must not be closed yet.
        arr = np.asarray(square)
    if arr.shape != (size, size, 3) or arr.dtype != np.uint8:  # defensive: never emit a wrong shape
        raise _Reject(f"decoded to unexpected shape {arr.shape} {arr.dtype}")
    return arr


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(0x0112, 1)  # 0x0112 = EXIF Orientation
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(im)
    except Exception:
        # Broken EXIF is common in scraped files and says nothing about the pixels: keep the
        # image as stored rather than skipping it.
        pass
    return im


def _to_l_or_rgb(im: Image.Image) -> Image.Image:
    """Convert to "L" or "RGB" (grayscale stays 1-channel until after the resize: 3x less work)."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_l(im)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        try:
            rgba = im.convert("RGBA")
        except ValueError:
            raise _Reject(f"unsupported colour mode ({mode})") from None
        # Composite on white: transparent backgrounds in anime art are meant to be paper-white,
        # and black (what dropping alpha gives for most files) would teach the GAN dark halos.
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return im.convert("L")
    try:
        return im.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, ...
    except ValueError:
        raise _Reject(f"unsupported colour mode ({mode})") from None


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale to 8-bit "L", scaled rather than clipped.

    I;16*: the full 0..65535 range maps to 0..255. Mode "I" from PNG is 16-bit data (older
    Pillow), so the same. Other "I"/"F": values already in 0..255 are kept, in 0..65535 are
    scaled as 16-bit, floats in 0..1 are scaled by 255, anything else is min-max stretched.
    """
    a = np.asarray(im)
    if a.ndim != 2:
        raise _Reject(f"unsupported colour mode ({im.mode})")
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        a16 = np.clip(a, 0, 65535).astype(np.uint32)
        return Image.fromarray(((a16 * 255 + 32767) // 65535).astype(np.uint8))
    f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
    if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        f = f * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        f = f * (255.0 / 65535.0)
    else:
        f = (f - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(f)
    return Image.fromarray(np.clip(np.rint(f), 0, 255).astype(np.uint8))


def _resize_centre_crop(im: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to ``size`` and keep the centred square, in one resampling pass."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    if side == size:
        return im.crop(box) if (w, h) != (size, size) else im
    # Resizing only the centre square (resize's ``box``) is the same as resize-then-crop (the
    # filter still reads source pixels just outside the box) but skips work on discarded pixels.
    # LANCZOS: the sharpest antialiased filter Pillow has; the cache is built once, so its extra
    # cost over BICUBIC is irrelevant, and blur in the training data becomes blur in the samples.
    # reducing_gap=3 first box-reduces huge inputs by an integer factor, keeping >= 3x for the
    # real filter; Pillow documents the result as indistinguishable from a plain LANCZOS resize.
    return im.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def _reason_for(e: BaseException) -> str:
    """Short user-facing reason for an exception raised while decoding one file."""
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # Pillow refuses before decoding; its message carries the pixel count but not W and H.
        digits = [int(tok.strip("(),")) for tok in str(e).split() if tok.strip("(),").isdigit()]
        return f"too large ({digits[0]:,} pixels)" if digits else "too large"
    if isinstance(e, UnidentifiedImageError):
        return "not an image"
    if isinstance(e, EOFError):
        return "truncated"
    if isinstance(e, MemoryError):
        return "too large (out of memory)"
    if isinstance(e, OSError) and e.errno is not None:
        return _os_reason(e)
    message = str(e)
    if "truncat" in message.lower():
        return "truncated"
    message = " ".join(message.split()).removesuffix(" when reading image file")  # one line, short
    if len(message) > 60:
        message = message[:57] + "..."
    if not message:
        return f"corrupt ({type(e).__name__})"
    # Pillow's OSError messages read fine alone; for anything else the type says more than the text.
    return f"corrupt ({message})" if isinstance(e, OSError) else f"corrupt ({type(e).__name__}: {message})"


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Silence Pillow's warnings (corrupt EXIF, palette transparency, bomb size...) while decoding.

    Each of those either has no bearing on the decoded pixels or becomes a BadImage reason;
    printing them would flood the console, and under ``-W error`` they would turn good images
    into skipped ones. Warnings from other modules (ours included) are left alone.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        yield


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
