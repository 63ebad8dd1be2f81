"""Freed host memory kept for the next update's tensors (glibc's malloc on Linux).

torch's CPU tensors come from malloc, and glibc serves every request above its mmap threshold
(at most 32 MB unless set) with fresh pages from the kernel and returns them on free. An update of
a CPU learner allocates and frees its large activations and gradients each time (an S image
update: 1,024 feature maps of 32 x 32 x 32 floats are 128 MB each), so every update faulted its
memory in again: ~1 M page faults and 2-3 s of kernel time per S image update eager, ~0.6 M and
1.7 s compiled. With the thresholds raised, freed blocks stay in malloc's heap and the next update
reuses them: after a few updates none fault (16 eager S image updates: 192 K, 61 K, then at most
27 K and mostly none), in exchange for a heap that keeps its peak (resident memory 3.47 GiB,
steady, against a peak of 2.9 GiB) and S image updates 15-26 % shorter (bench/README.md).
"""
from __future__ import annotations

import ctypes
import sys

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Requests below this come from the heap: larger than any one tensor of an XL update.
HEAP_BELOW_BYTES = 1 << 30
NEVER = -1  # as M_TRIM_THRESHOLD: never give the heap's free top back (mallopt(3))


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (process-wide); False where the C library
    is not glibc (nothing changes there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it (musl's mallopt does nothing)
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_BELOW_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER))
