"""The decoded-image cache: each image is decoded once into a memory-mapped uint8 N x 3 x S x S file.

Later epochs and later runs read only this file, so no JPEG is decoded after the first pass. A
cache entry is keyed by everything that changes its contents (the file list with sizes and
mtimes, or the demo-face recipe, and the image size); a stale entry is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from animegen.data.images import DataError, DecodeReport, ImageFile, decode_all, scan_folder
from animegen.errors import UserError

CACHE_VERSION = 1
ARRAY_NAME = "images.u8"
META_NAME = "meta.json"


def default_cache_root() -> Path:
    if os.environ.get("ANIMEGEN_CACHE"):
        return Path(os.environ["ANIMEGEN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "animegen"


@dataclass
class ImageSet:
    """Decoded images ready for training: `images` is (N, 3, S, S) uint8, usually a read-only memmap."""

    images: np.ndarray
    key: str
    source: str  # the folder, or "demo faces (seed S)"
    skipped: list[tuple[str, str]]
    cache_hit: bool
    cache_path: Path | None
    names: list[str] = field(
        default_factory=list
    )  # each row's file, relative to the folder ([] for demo faces)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def warning_line(self) -> str | None:
        root = self.source if self.cache_path is not None and Path(self.source).is_dir() else None
        return DecodeReport(decoded=len(self), skipped=self.skipped, root=root).warning_line()


def folder_key(root: Path, files: list[ImageFile], image_size: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "size": image_size, "kind": "folder"}).encode())
    for f in files:
        rel = os.path.relpath(f.path, root)
        h.update(os.fsencode(rel) + b"\0" + f"{f.size}:{f.mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def demo_key(count: int, image_size: int, seed: int) -> str:
    text = json.dumps({"v": CACHE_VERSION, "size": image_size, "kind": "demo", "count": count, "seed": seed})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _open_entry(entry: Path, key: str) -> tuple[np.ndarray, dict] | None:
    meta_path = entry / META_NAME
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or meta.get("version") != CACHE_VERSION:
            return None
        shape = tuple(meta["shape"])
        if shape[0] == 0:
            return np.zeros(shape, np.uint8), meta
        # mode "c" (copy-on-write) keeps the file read-only on disk yet gives a writable array,
        # which torch.from_numpy wants.
        array = np.memmap(entry / ARRAY_NAME, dtype=np.uint8, mode="c", shape=shape)
        return array, meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_entry(
    entry: Path,
    key: str,
    count: int,
    image_size: int,
    fill: Callable[[np.ndarray], tuple[int, list[tuple[str, str]]]],
    source: str,
) -> None:
    """Fill a fresh entry in a temp folder, then rename it into place so readers never see half a cache."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shape = (max(count, 1), 3, image_size, image_size)
        array = np.memmap(tmp / ARRAY_NAME, dtype=np.uint8, mode="w+", shape=shape)
        good, skipped = fill(array)
        array.flush()
        del array
        # Drop the rows of skipped files so the file holds exactly the good images.
        with open(tmp / ARRAY_NAME, "r+b") as fh:
            fh.truncate(good * 3 * image_size * image_size)
            fh.flush()
            os.fsync(fh.fileno())
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "shape": [good, 3, image_size, image_size],
            "source": source,
            "skipped": skipped,
        }
        (tmp / META_NAME).write_text(json.dumps(meta))
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_folder(
    root: str | os.PathLike,
    image_size: int,
    cache_root: str | os.PathLike | None = None,
    limit: int | None = None,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ImageSet:
    """Scan a folder and return its decoded images, from the cache when it is current.

    Raises UserError (one line) when the folder is missing or holds no usable image.
    """
    root_path = Path(root).expanduser()
    try:
        files = scan_folder(root_path, limit=limit)
    except DataError as e:
        raise UserError(str(e)) from None
    if not files:
        raise UserError(
            f"{root_path}: no image files found (looked for .jpg .jpeg .png .webp .bmp .gif, recursively)"
        )
    key = folder_key(root_path.resolve(), files, image_size)
    entry = Path(cache_root or default_cache_root()) / f"{key}-{image_size}px"
    opened = _open_entry(entry, key)
    hit = opened is not None
    if opened is None:
        if workers <= 0:
            workers = min(8, os.cpu_count() or 1)

        def fill(array: np.ndarray) -> tuple[int, list[tuple[str, str]]]:
            cb = (lambda n: progress(n, len(files))) if progress else None
            decoded, report = decode_all(files, image_size, out=array, workers=workers, progress=cb)
            return len(decoded), [(str(p), r) for p, r in report.skipped]

        try:
            _write_entry(entry, key, len(files), image_size, fill, str(root_path))
        except OSError as e:
            raise UserError(f"{entry}: cannot write the image cache ({e.strerror or e})") from None
        opened = _open_entry(entry, key)
        if opened is None:
            raise UserError(f"{entry}: the image cache could not be read back after writing it")
    images, meta = opened
    skipped = [tuple(s) for s in meta.get("skipped", [])]
    if len(images) == 0:
        reasons = DecodeReport(decoded=0, skipped=skipped).warning_line() or ""
        raise UserError(f"{root_path}: none of the {len(files)} image files could be used ({reasons})")
    bad = {path for path, _ in skipped}
    names = [os.path.relpath(f.path, root_path) for f in files if os.fsdecode(f.path) not in bad]
    return ImageSet(
        images, key, str(root_path), skipped, hit, entry, names if len(names) == len(images) else []
    )


def load_demo(
    count: int,
    image_size: int,
    seed: int = 0,
    cache_root: str | os.PathLike | None = None,
) -> ImageSet:
    """The built-in procedural faces, drawn once and cached like a folder."""
    from animegen.data.demo_faces import demo_face_array

    key = demo_key(count, image_size, seed)
    entry = Path(cache_root or default_cache_root()) / f"demo-{key}-{image_size}px"
    opened = _open_entry(entry, key)
    hit = opened is not None
    if opened is None:

        def fill(array: np.ndarray) -> tuple[int, list[tuple[str, str]]]:
            array[:count] = demo_face_array(count, image_size, seed)
            return count, []

        try:
            _write_entry(entry, key, count, image_size, fill, f"demo faces (seed {seed})")
        except OSError as e:
            raise UserError(f"{entry}: cannot write the image cache ({e.strerror or e})") from None
        opened = _open_entry(entry, key)
        assert opened is not None
    images, _ = opened
    return ImageSet(images, key, f"built-in demo faces ({count}, seed {seed})", [], hit, entry)
