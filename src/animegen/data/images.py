"""Find image files in a folder and decode them to fixed-size RGB arrays, skipping unusable ones.

This is the only place that touches raw image files. Everything downstream (the training cache,
the data loader) sees ``uint8`` arrays of shape ``(3, size, size)``. Scraped folders contain all
sorts of junk, so the rules are: never crash, never hang, never silently feed a wrong image to the
model; every file that cannot be used is skipped with a short, user-facing reason.

How one file is decoded, and which files are rejected, is documented in :mod:`animegen.data.decode`.
The work is split by job: :mod:`~animegen.data.scan` finds the files, :mod:`~animegen.data.decode`
decodes one file, :mod:`~animegen.data.report` words what was skipped; this module decodes a whole
list (in worker threads if asked) and is the public entry point for all of them.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from animegen.data.decode import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    _check_size,
    _quiet_pillow,
    _try_load_hwc,
    load_image,
    min_image_side,
)
from animegen.data.report import BadImage, DataError, DecodeReport, _common_dir
from animegen.data.scan import IMAGE_EXTENSIONS, ImageFile, scan_folder

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

# How many files a worker decodes per task: amortises the executor overhead (tens of µs per
# future), which matters when a 96x96 JPEG decodes in well under a millisecond.
_CHUNK = 16
# How many files between progress() calls.
_PROGRESS_EVERY = 64


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
