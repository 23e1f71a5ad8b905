"""The process's memory allocator: freed activations stay in the heap for the next step to reuse.

glibc serves every allocation above its mmap threshold (128 KiB, raised only as far as the
largest block freed so far) with a fresh mapping and unmaps it when freed, so a sampling loop
that allocates and frees batch-sized activations at every step page-faults every page of them
again at every step: 3 s of kernel time in 62 s of generating 64 images with the tiny models,
5 % (python -m bench.run prints each stage's kernel share). Raising the mmap and trim thresholds
keeps those blocks mapped; the process's peak memory is unchanged, it is only returned later.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
# blocks up to 1 GiB come from the heap (512 px activations included); a glibc that caps the threshold at
# HEAP_MAX_SIZE / 2 refuses that, and 32 MiB still covers the small models' activations
MMAP_THRESHOLDS = (2**30, 32 * 2**20)
TRIM_THRESHOLD = 2**30  # free memory at the heap's top kept for the next step, up to this much


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for this process; False (nothing changed) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: their allocators do not unmap this eagerly
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mapped = any(mallopt(M_MMAP_THRESHOLD, threshold) for threshold in MMAP_THRESHOLDS)
    return bool(mapped and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
