"""Find image files in a folder and decode them to fixed-size RGB arrays, skipping unusable ones.

This is the only place that touches raw image files. Everything downstream (the training cache,
the data loader) sees ``uint8`` arrays of shape ``(3, size, size)``. Scraped folders contain all
sorts of junk, so the rules are: never crash, never hang, never silently feed a wrong image to the
model; every file that cannot be used is skipped with a short, user-facing reason.

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
import errno
import os
import stat
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "BadImage",
    "DataError",
    "DecodeReport",
    "ImageFile",
    "decode_all",
    "load_image",
    "min_image_side",
    "scan_folder",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

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

# How many files a worker decodes per task: amortises the executor overhead (tens of µs per
# future), which matters when a 96x96 JPEG decodes in well under a millisecond.
_CHUNK = 16
# How many files between progress() calls.
_PROGRESS_EVERY = 64


class DataError(Exception):
    """A problem with the user's data folder; ``str(e)`` is a one-line, user-facing message."""


class BadImage(Exception):
    """One file that cannot be used as a training image.

    ``path`` is the file name as given (a ``str``; undecodable bytes are surrogate-escaped), and
    ``reason`` a short phrase such as ``"truncated"`` or ``"not an image"``.
    """

    def __init__(self, path: str, reason: str) -> None:
        # Passing both to Exception keeps the exception picklable (process pools, multiprocessing).
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class _Reject(Exception):
    """Internal: the file being decoded is unusable; the message is the reason."""


@dataclass(frozen=True)
class ImageFile:
    """One candidate image file found by :func:`scan_folder`."""

    path: Path  # absolute (symlinks inside the folder are kept, not resolved)
    size: int  # bytes (st_size)
    mtime_ns: int


@dataclass
class DecodeReport:
    """What :func:`decode_all` did: how many files were decoded and which were skipped, and why."""

    decoded: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), in file order
    # Common folder of the decoded files; warning_line() shows skipped paths relative to it.
    root: str | None = None

    @property
    def total(self) -> int:
        return self.decoded + len(self.skipped)

    def warning_line(self, max_named: int = 3) -> str | None:
        """None if nothing was skipped, else one printable line naming the first few skipped files."""
        if not self.skipped:
            return None
        total = self.total
        line = (
            f"skipped {len(self.skipped):,} of {total:,} file{'s' if total != 1 else ''} "
            "that are not usable images"
        )
        named = [f"{self._display(p)} ({_printable(r)})" for p, r in self.skipped[: max(0, max_named)]]
        if named:
            line += ": " + ", ".join(named)
            rest = len(self.skipped) - len(named)
            if rest:
                line += f", and {rest:,} more"
        return line

    def _display(self, path: str) -> str:
        if self.root:
            prefix = self.root.rstrip(os.sep) + os.sep
            if path.startswith(prefix):
                path = path[len(prefix) :]
        return _printable(path)


# --------------------------------------------------------------------------------------- scanning


def scan_folder(root: str | os.PathLike[str], limit: int | None = None) -> list[ImageFile]:
    """List the image files under ``root``, recursively, sorted by path relative to ``root``.

    Directory symlinks are followed, but every directory is entered at most once (by device and
    inode), so symlink loops and diamonds terminate and list each folder once. Hidden files and
    folders are kept. Entries that cannot be stat'ed (broken symlinks, symlink loops, races) and
    non-regular files (FIFOs, devices) are skipped silently; unreadable sub-folders too. ``limit``
    keeps the first ``limit`` files after sorting.

    Raises DataError if ``root`` does not exist, is not a folder, or cannot be read.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    root_str = os.path.abspath(os.fspath(root))
    shown = _printable(root_str)
    try:
        root_stat = os.stat(root_str)
    except FileNotFoundError:
        raise DataError(f"image folder not found: {shown}") from None
    except OSError as e:
        raise DataError(f"cannot access image folder {shown}: {_os_reason(e)}") from None
    if not stat.S_ISDIR(root_stat.st_mode):
        raise DataError(f"not a folder: {shown} (expected a folder of images)")

    found: list[tuple[str, ImageFile]] = []
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    # Depth-first with sorted entries, so which of two paths to the same folder wins is deterministic.
    stack: list[tuple[str, str]] = [(root_str, "")]
    while stack:
        dir_path, rel_dir = stack.pop()
        try:
            with os.scandir(dir_path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if rel_dir == "":
                raise DataError(f"cannot read image folder {shown}: {_os_reason(e)}") from None
            continue  # unreadable or vanished sub-folder: nothing we can list
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                st = entry.stat()  # follows symlinks
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key not in visited:
                    visited.add(key)
                    subdirs.append((entry.path, rel))
            elif stat.S_ISREG(st.st_mode) and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((rel, ImageFile(Path(entry.path), st.st_size, st.st_mtime_ns)))
        stack.extend(reversed(subdirs))

    found.sort(key=lambda item: item[0])
    files = [f for _, f in found]
    return files if limit is None else files[:limit]


# --------------------------------------------------------------------------------------- decoding


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


def decode_all(
    files: Sequence[ImageFile],
    size: int,
    out: np.ndarray | None = None,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, DecodeReport]:
    """Decode ``files``; returns ``(images, report)`` with the K good images in file order.

    ``images`` has shape ``(K, 3, size, size)``, ``uint8``. If ``out`` (a ``(N, 3, size, size)``
    ``uint8`` array with ``N >= len(files)``, e.g. a ``np.memmap``) is given, good images are
    written into its first K rows and ``out[:K]`` is returned. ``workers > 0`` decodes in that
    many threads (Pillow releases the GIL while decoding and resizing); the result is identical to
    ``workers=0``. ``progress(n)`` is called from the calling thread with the number of files
    handled so far, every few dozen files and once at the end.
    """
    _check_size(size)
    n = len(files)
    if out is None:
        out = np.empty((n, 3, size, size), dtype=np.uint8)
    elif not (
        isinstance(out, np.ndarray)
        and out.dtype == np.uint8
        and out.ndim == 4
        and out.shape[1:] == (3, size, size)
        and out.shape[0] >= n
    ):
        shape = getattr(out, "shape", None)
        dtype = getattr(out, "dtype", None)
        raise ValueError(
            f"out must be a uint8 array of shape (>={n}, 3, {size}, {size}), got {dtype} {shape}"
        )

    paths = [os.fsdecode(f.path) for f in files]
    report = DecodeReport(decoded=0, root=_common_dir(paths))
    k = 0
    last_progress = 0
    # One filter change for the whole run, made in this thread: worker threads share the
    # process-wide filter list, and per-file catch_warnings() from several threads would race.
    # closing(): if progress() raises, stop the worker pool now rather than when garbage-collected.
    with _quiet_pillow(), contextlib.closing(_iter_decoded(paths, size, workers)) as results:
        for i, result in enumerate(results, start=1):
            if isinstance(result, BadImage):
                report.skipped.append((result.path, result.reason))
            else:
                out[k] = result.transpose(2, 0, 1)
                k += 1
            if progress is not None and i - last_progress >= _PROGRESS_EVERY:
                last_progress = i
                progress(i)
    report.decoded = k
    if progress is not None:
        progress(n)
    return out[:k], report


def _iter_decoded(paths: list[str], size: int, workers: int) -> Iterator[np.ndarray | BadImage]:
    """Yield, in order, an (size, size, 3) array or a BadImage for each path."""
    if workers <= 0 or len(paths) <= _CHUNK:
        for p in paths:
            yield _try_load_hwc(p, size)
        return

    Image.init()  # register all plugins once here rather than racing to do it in the workers
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    # Bounded number of chunks in flight keeps memory flat however far the workers run ahead.
    max_in_flight = 4 * workers
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="animegen-decode")
    pending: deque[Future[list[np.ndarray | BadImage]]] = deque()
    try:
        next_chunk = 0
        while next_chunk < len(chunks) or pending:
            while next_chunk < len(chunks) and len(pending) < max_in_flight:
                pending.append(pool.submit(_load_chunk, chunks[next_chunk], size))
                next_chunk += 1
            yield from pending.popleft().result()
    finally:
        # On an early exit (KeyboardInterrupt, a failing progress callback) do not decode the rest.
        pool.shutdown(wait=True, cancel_futures=True)


def _load_chunk(paths: list[str], size: int) -> list[np.ndarray | BadImage]:
    return [_try_load_hwc(p, size) for p in paths]


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
            # resampler below, so output quality is unchanged while big JPEGs decode 4-60x faster.
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


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "unreadable (permission denied)"
    if e.errno == errno.ENOENT:
        return "file not found"
    if e.errno in (errno.EISDIR, errno.ENOTDIR):
        return "not a regular file"
    return f"unreadable ({e.strerror or errno.errorcode.get(e.errno or 0, 'I/O error')})"


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


def _common_dir(paths: list[str]) -> str | None:
    dirs = {os.path.dirname(p) for p in paths}
    if not dirs:
        return None
    try:
        return os.path.commonpath(sorted(dirs))
    except ValueError:  # mix of absolute and relative paths
        return None


def _printable(text: str) -> str:
    """Make a path or message safe to print on one line, whatever bytes the file name had."""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(c if c.isprintable() else "?" for c in text)
