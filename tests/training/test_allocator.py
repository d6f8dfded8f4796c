"""glibc keeps freed memory for reuse once the trainer asks it to: far fewer page faults per pass."""

from __future__ import annotations

import subprocess
import sys

import pytest

from preftune.training import allocator

# A training pass in miniature: a layer's worth of 4 MB activations allocated, written and freed,
# round after round. Prints the page faults of the measured rounds. With glibc's defaults the freed
# 64 MB at the top of the heap exceeds the trim threshold (twice the largest block glibc has seen
# unmapped, here 8 MB), so it goes back to the kernel and every page faults in again next round.
# (An earlier version churned bf16 matmul outputs; oneDNN's own buffers made its default-mode count
# swing from 2,000 to 15,000 between machines.)
ROUNDS, BLOCKS, BLOCK_PAGES = 5, 16, 1024
CHURN = f"""
import resource, sys, torch
from preftune.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def churn():
    for _ in range({ROUNDS}):
        blocks = [torch.empty({BLOCK_PAGES}, 1024).fill_(1.0) for _ in range({BLOCKS})]
        del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reallocating_the_same_sizes_faults_far_fewer_pages_in() -> None:
    pages_written = ROUNDS * BLOCKS * BLOCK_PAGES  # 81,920 pages of 4 KB
    default, kept = page_faults("default"), page_faults("keep")
    # The churn does exercise glibc's trimming: by default nearly every page faults in again
    # (81,760 of 81,920 on glibc 2.36) ...
    assert default > pages_written / 2, (default, kept)
    # ... and with the memory kept, next to none do (0 here).
    assert kept < pages_written / 50, (default, kept)


def test_leaves_a_users_own_allocator_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "100000")
    allocator.keep_freed_memory.cache_clear()
    try:
        assert not allocator.keep_freed_memory()
    finally:
        allocator.keep_freed_memory.cache_clear()
