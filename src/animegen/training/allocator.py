"""glibc's allocator set for a training loop: a step's freed buffers stay mapped for the next step.

Every step frees and allocates the same activation, gradient and convolution scratch buffers.
With glibc's defaults the larger ones are mmap'ed and unmapped each time and the heap's free top is
handed back to the kernel, so the next step touches fresh pages that the kernel must fault in and
zero, a large share of a CPU step. Raising the mmap and trim thresholds keeps those pages
(docs/design-notes.md); PyTorch's CPU tuning guide gets the same from jemalloc or tcmalloc, this
needs neither.
The kept memory is what one step needs anyway; `release_freed_memory` returns it at epoch ends,
so what checkpoint writes and evaluations freed does not pile up across epochs.

These are settings of the process's C allocator, so they outlast the trainer; other platforms and
C libraries (macOS, Windows, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import functools
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap and stay there when freed; above any one step's buffer.
KEEP_BYTES = 1 << 30


@functools.cache  # looked up once, not at every epoch end
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def available() -> bool:
    """Whether this process's C library is glibc, whose allocator `keep_freed_memory` tunes."""
    return _glibc() is not None


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Keep freed blocks below `limit` bytes mapped for reuse; True where the C library took it."""
    libc = _glibc()
    if libc is None:
        return False
    mmap_taken = libc.mallopt(M_MMAP_THRESHOLD, limit) == 1
    trim_taken = libc.mallopt(M_TRIM_THRESHOLD, limit) == 1
    return mmap_taken and trim_taken


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (a no-op outside glibc)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
