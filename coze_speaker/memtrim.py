"""Give the C heap's free pages back to the system when the speaker goes idle.

glibc keeps what Python freed (the config parsed at start, an announcement's buffers) in its
heap, resident but unused; on a Pi that shares its memory with other services, that is worth
returning: ≈ 1 MB after start (docs/benchmarks.md). ``malloc_trim(0)`` does it in a few
milliseconds, so it runs only once the queue is idle. Without glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_trim: Any = None  # libc's malloc_trim, False where there is none


def release_free_memory() -> int:
    """Return the heap's free pages to the system; the kB of resident memory given back
    (0 when nothing was, or on a libc without malloc_trim)."""
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL(None).malloc_trim  # the libc this process runs on
            _trim.argtypes = [ctypes.c_size_t]
            _trim.restype = ctypes.c_int
        except (ImportError, OSError, AttributeError):
            _trim = False
    if _trim is False:
        return 0
    before = resident_kib()
    _trim(0)
    freed = max(0, before - resident_kib())
    log.debug("idle: gave %d kB of free heap back to the system", freed)
    return freed


def resident_kib() -> int:
    """This process's resident memory (VmRSS) in kB, 0 where /proc does not tell."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
