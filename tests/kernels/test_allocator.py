"""glibc keeps freed memory for reuse once the trainer asks it to, instead of handing it back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from preftune.kernels import allocator

# A training pass in miniature, in a fresh process: a 30 MB block (an output-layer tile), then a
# layer's worth of 4 MB activations allocated, written and freed, round after round. Prints, from
# glibc's own books (mallinfo2), whether the 30 MB block came from mmap, how much freed memory the
# heap holds after a round, and the page faults of the last round.
#
# Only the kept mode is asserted on: glibc's default thresholds adapt to the allocation history, so
# what they do with the same churn differs between machines (page faults in the last rounds from 0 to
# 81,760). The kept mode's are fixed numbers, and each check below fails without them.
ROUNDS, BLOCKS, BLOCK_BYTES, TILE_BYTES = 4, 16, 4 * 1024 * 1024, 30 * 1024 * 1024
CHURN = f"""
import ctypes, ctypes.util, json, resource, sys, torch
from preftune.kernels.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
if not hasattr(libc, "mallinfo2"):  # glibc before 2.33
    print("{{}}")
    sys.exit()
libc.mallinfo2.restype = MallInfo2
mapped = libc.mallinfo2().hblkhd
tile = torch.empty({TILE_BYTES} // 4)
tile_mapped = libc.mallinfo2().hblkhd - mapped >= {TILE_BYTES}
del tile
for _ in range({ROUNDS}):
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.empty({BLOCK_BYTES} // 4).fill_(1.0) for _ in range({BLOCKS})]
    del blocks
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps(dict(tile_mapped=tile_mapped, free=libc.mallinfo2().fordblks, faults=faults)))
"""


def churn(mode: str) -> dict[str, int]:
    run = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    books: dict[str, int] = json.loads(run.stdout.splitlines()[-1])
    if not books:
        pytest.skip("glibc before 2.33 has no mallinfo2")
    return books


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_activations_stay_in_the_process_for_the_next_pass() -> None:
    kept = churn("keep")
    # Blocks up to 32 MB come from the heap: by default glibc maps a first block this large on its own
    # and hands it back to the kernel when it is freed.
    assert not kept["tile_mapped"], kept
    # A freed round stays in the heap (glibc trims only above 1 GB free) ...
    assert kept["free"] >= BLOCKS * BLOCK_BYTES, kept
    # ... so the next round reuses it: next to no pages faulted in again (0 here, of 16,384).
    assert kept["faults"] < BLOCKS * BLOCK_BYTES / 4096 / 50, kept


def test_leaves_a_users_own_allocator_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "100000")
    allocator.keep_freed_memory.cache_clear()
    try:
        assert not allocator.keep_freed_memory()
    finally:
        allocator.keep_freed_memory.cache_clear()
