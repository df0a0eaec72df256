"""A process setting for CPU runs: keep freed heap memory for reuse instead of handing it back to the OS.

glibc's malloc serves a block of 128 KiB and more with fresh pages from `mmap` (a threshold it raises as such blocks
are freed, up to 32 MiB) and gives the top of its heap back to the OS once more than twice that threshold is free.
A decode loop allocates and frees the same tensors batch after batch (activations, the KV cache's buffers), so every
batch faults its pages in again (on the demo's Coconut at 32 rows: in the prefill and in the first thought step,
whose KV buffers are new). On the machine of README "Session 39", glibc's `MALLOC_MMAP_THRESHOLD_` /
`MALLOC_TRIM_THRESHOLD_` set to the values below took `bench/coconut.py --batch 32` from 17.6-19.1x to 21.7-22.9x.
vLLM's CPU backend asks for another allocator (tcmalloc) for the same reason.

`keep_freed_memory()` fixes the two thresholds (mmap from 32 MiB, trim above 512 MiB free) with glibc's `mallopt`.
It changes the whole process, so the library never calls it on import: the `latentcot` command, its demo workers and
the benches do, at their start. The cost: up to 512 MiB of freed memory stays with the process, and blocks under 32
MiB come from the heap. `LATENTCOT_KEEP_HEAP=0` turns it off; where either glibc variable is set, the user's setting
stands; off glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_FROM = 32 << 20  # blocks of this size and up get their own mapping (glibc's own upper limit for the threshold)
TRIM_ABOVE = 512 << 20  # the heap's free top is handed back only beyond this

_USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Sets the two glibc thresholds for this process (once); whether they are set now."""
    if os.environ.get("LATENTCOT_KEEP_HEAP", "1") == "0" or any(v in os.environ for v in _USER_VARS):
        return False
    return _apply()


@functools.cache
def _apply() -> bool:
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_FROM)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))


def _glibc():
    """The C library when it is glibc (the one with these mallopt parameters), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
