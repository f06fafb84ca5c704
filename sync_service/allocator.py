"""Have the C allocator give large freed blocks back (issue 11's memory bound).

A run builds a few large buffers over and over: each import's JSON body (~8 MiB per 50,000
contacts) and the encoder's working buffer. glibc serves a block of 128 KiB or more by ``mmap``
and unmaps it when freed, but its threshold is dynamic: after the first such block is freed it
rises (up to 32 MiB), so later bodies come from the heap, which glibc keeps. Measured with
``bench/bench_memory.py --rows 1000000 --batch-size 50000 --import-seconds 5``: peak RSS 208 to
218 MiB with the dynamic threshold, 197 MiB with it fixed at 128 KiB (Python's own objects peak
at ~79 MiB of that; tracemalloc).

``release_large_blocks`` fixes the threshold with ``mallopt`` where the C library is glibc; it
does nothing elsewhere (musl has no ``mallopt``), and nothing when the operator set glibc's own
``MALLOC_MMAP_THRESHOLD_`` (theirs wins).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD = 128 * 1024  # glibc's default starting value, kept fixed


def release_large_blocks() -> bool:
    """Fix glibc's mmap threshold at 128 KiB for this process; True when it was set."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
