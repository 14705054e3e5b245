"""One trainer per run dir, and the cleanup of what writes cut short by a kill left there."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from animegen.errors import UserError

TEMP_RE = re.compile(r"^\..+\.tmp\d+$")  # checkpoint_format.write_atomic's temp names


def is_temp_file(path: Path) -> bool:
    """A temp file of checkpoint_format.write_atomic's, which a kill mid-write leaves behind."""
    return TEMP_RE.match(path.name) is not None


class RunLock:
    """One training process at a time per run dir (rank 0's, under torchrun).

    An flock: the kernel drops it when its process dies, SIGKILL included, so a requeued job never
    meets a stale lock, while a second job started on a run that still trains is refused.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fh: Any = None

    def acquire(self, wait_s: float = 2.0) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; a second job there is the user's to avoid
            return
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the run's life
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                fh.seek(0)
                holder = fh.read().strip() or "?"
                fh.close()
                raise UserError(
                    f"{self.path.parent}: another animegen process (pid {holder}) is training this run; "
                    "stop it first or wait for it to end"
                ) from None
            except OSError:  # a file system without locks (some network mounts): train unlocked
                fh.close()
                return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def remove_temp_files(run_dir: Path) -> int:
    """Delete what writes cut short by a kill left behind (only while holding the RunLock)."""
    removed = 0
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if is_temp_file(p) and p.is_file():
                try:
                    p.unlink()
                    removed += 1
                except OSError:
                    pass
    return removed
