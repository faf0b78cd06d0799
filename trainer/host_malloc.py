"""glibc's malloc told to keep freed memory, so a training step stops page-faulting its tensors.

PyTorch's CPU allocator is the C library's ``malloc``. glibc serves a request above its
mmap threshold (128 KiB at start, raised on the fly to the largest block freed, up to
32 MiB) with a fresh ``mmap`` and gives it back on ``free``, and it returns the top of the
heap to the kernel whenever more than the trim threshold lies free there. A DLRM step
allocates and frees megabyte tensors every step (the interaction's (B, 27, 27) Gram
matrix, the pooled embeddings, their gradients, ~7 MB each at B=2048), so under glibc's
heuristics many of them come back as new pages: each first touch is a page fault plus
zeroing 4 KiB, about 2.5 us here. Measured on the demo's full-table step (B=2048, one
thread): 240 to 4,700 minor faults per step with the defaults, depending on the order in
which sizes were seen (about 1 to 12 ms of a 25-50 ms step), ~100 with this
(``benchmarks/host_malloc.py``; ``docs/speed.md``, "Host memory").

``keep_freed_memory`` fixes the three thresholds (which also switches glibc's dynamic
adjustment off): requests below 32 MiB (glibc's largest mmap threshold on 64-bit) come from
the heap, freed heap memory up to 1 GiB stays with the process, and the heap grows 64 MiB at a
time. A training process's resident memory then stays at its peak instead of shrinking
between steps: the point. jemalloc or tcmalloc through ``LD_PRELOAD`` would do much the same,
but a Ray worker or a pod needs that set before it starts and the library installed; this
needs nothing. Not glibc (musl, macOS): nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt's parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for it on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds for this process (see the module docstring). Returns
    whether all three took effect (False off glibc). Safe to call more than once."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
