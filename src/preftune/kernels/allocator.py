"""Keep freed memory in the process for reuse, instead of glibc handing it back to the kernel.

A training pass allocates and frees tensors of a few to a few tens of MB over and over (the output
layer's float32 logit tiles, a layer's activations and their gradients). With glibc's defaults many
of those are returned to the kernel when freed (the top of the heap is trimmed, large blocks are
unmapped), and the next allocation of the same size page-faults every 4 KB page back in, zeroed: about
50,000 page faults in every pass of 2,000 tokens of smollm2-135m-instruct, and a bf16 logit tile's
conversion to float32 2.3x slower than with the memory kept (`benchmarks/RESULTS.md`).

Fixed thresholds (blocks up to 32 MB from the heap, the heap trimmed only above 1 GB free) make freed
memory come back without faults; glibc stops adapting them. Peak RSS barely moves: what is kept is
what the next pass allocates again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024
# A user who tunes glibc's allocator through its environment variables keeps their settings.
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process, once; False where there is no glibc (or the user set them)."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
