"""Returning freed memory to the OS (glibc), and reading resident memory.

A decoded image is one large buffer. glibc's allocator raises its mmap threshold after the
first large free (up to 32 MiB), after which such buffers come from the heap and per-thread
arenas, where fragmentation keeps them resident long after they are freed: the issue's
2.6 GiB that stayed after 16 large images. Fixing the threshold (so every large buffer is
its own mapping, unmapped on free), capping the number of arenas, and trimming after a
large decode keeps resident memory near its baseline. No-ops off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def tune_allocator(mmap_threshold: int = 1 << 20, arena_max: int = 2) -> bool:
    """Large buffers as their own mappings, few arenas. Environment settings
    (MALLOC_MMAP_THRESHOLD_, MALLOC_ARENA_MAX) win. Returns whether glibc was tuned."""
    if _LIBC is None:
        return False
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold)
    if "MALLOC_ARENA_MAX" not in os.environ:
        _LIBC.mallopt(_M_ARENA_MAX, arena_max)
    return True


def trim() -> None:
    """Give free heap memory back to the OS (glibc `malloc_trim(0)`)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
