"""Giving freed memory back to the operating system, so osr-serve's RSS falls after a burst.

glibc keeps freed heap memory for reuse: after a burst of large decodes on many threads the
process stayed at 9.0 GB (issue 20). Two glibc settings fix that for the serving process:
``mallopt(M_MMAP_THRESHOLD)`` fixed at 1 MiB (glibc otherwise raises it up to 32 MiB after the
first large free, after which Pillow's 16 MiB image blocks come from the heap and stay there), so
every large block is mapped and unmapped on free; and ``malloc_trim(0)`` after a large decode,
which hands back the free pages of every arena. Elsewhere (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import threading

log = logging.getLogger("osr.serve")

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_AFTER_BYTES = 64 << 20  # a decode estimated at this much or more is followed by malloc_trim

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_loaded = False


def _glibc() -> ctypes.CDLL | None:
    global _libc, _loaded
    with _lock:
        if not _loaded:
            _loaded = True
            if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
                try:
                    _libc = ctypes.CDLL("libc.so.6")
                except OSError:
                    _libc = None
        return _libc


def map_large_allocations(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (process-wide); True when it was set."""
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold_bytes)))
    log.debug("mallopt(M_MMAP_THRESHOLD, %d): %s", threshold_bytes, done)
    return done


def trim() -> None:
    """Return the free pages of every malloc arena to the operating system (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))
