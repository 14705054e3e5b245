"""What the user is told about unusable files: the exceptions, the decode report, printable names.

Shared by :mod:`animegen.data.scan` (folder errors) and :mod:`animegen.data.decode` (per-file reasons);
:mod:`animegen.data.images` re-exports the public names.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

__all__ = ["BadImage", "DataError", "DecodeReport"]


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
