"""Give freed memory back to the system in long-lived processes (glibc only). Pure setup.

A daemon that passes large frames (a 1 MiB tool result, say) allocates and frees
big buffers all day. glibc serves allocations over its mmap threshold with mmap, and
gives them back on free, but it raises that threshold each time such a block is
freed, so later big buffers come from the heap, whose freed pages stay with the
process: its RSS ratchets up to its busiest moment and stays there. Fixing the
threshold keeps big buffers mmapped, so what a burst took is returned after it.
Elsewhere (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["MMAP_THRESHOLD_BYTES", "return_big_frees", "trim"]

# glibc's mallopt parameter numbers for M_MMAP_THRESHOLD and M_ARENA_MAX.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# The daemon's threads (file writes, DNS) are few and short: each would otherwise get
# an arena of its own whose freed pages stay mapped.
ARENAS = 2
# Its default starting value: buffers this big or bigger are mapped, and unmapped on free.
MMAP_THRESHOLD_BYTES = 128 * 1024


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def trim() -> bool:
    """Hand the free pages inside the heap back (glibc `malloc_trim`): what smaller
    buffers of a finished burst left behind. True when it ran."""
    libc = _glibc()
    malloc_trim = getattr(libc, "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim(0)
    return True


def return_big_frees() -> bool:
    """Fix glibc's mmap threshold (turning off its growth) and cap its arenas; True
    when the threshold took effect."""
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None:
        return False  # not glibc
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(_M_ARENA_MAX, ARENAS)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
