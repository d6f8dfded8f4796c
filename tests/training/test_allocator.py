"""glibc keeps freed memory for reuse once the trainer asks it to: far fewer page faults per pass."""

from __future__ import annotations

import subprocess
import sys

import pytest

from preftune.training import allocator

# A training pass in miniature: a bf16 matmul's output converted to float32 (the output layer's logit
# tiles), with another large block allocated and freed in between. Prints the page faults of the
# second of two rounds.
CHURN = """
import resource, sys, torch
from preftune.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
hidden, weight = torch.randn(1024, 576).bfloat16(), torch.randn(2048, 576).bfloat16()
def churn():
    for _ in range(20):
        logits = (hidden @ weight.t()).float()
        other = torch.empty(1958, 1536)
        logits.exp_().sum()
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
    default, kept = page_faults("default"), page_faults("keep")
    # glibc's defaults hand most of each 8 MB tile back and fault it in again (15,000 faults here).
    assert kept < default / 3, (default, kept)


def test_leaves_a_users_own_allocator_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "100000")
    allocator.keep_freed_memory.cache_clear()
    try:
        assert not allocator.keep_freed_memory()
    finally:
        allocator.keep_freed_memory.cache_clear()
