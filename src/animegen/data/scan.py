"""Find the image files in a folder: recursive, sorted, safe against symlink loops and odd entries."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from animegen.data.report import DataError, _os_reason, _printable

__all__ = ["IMAGE_EXTENSIONS", "ImageFile", "scan_folder"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclass(frozen=True)
class ImageFile:
    """One candidate image file found by :func:`scan_folder`."""

    path: Path  # absolute (symlinks inside the folder are kept, not resolved)
    size: int  # bytes (st_size)
    mtime_ns: int


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
