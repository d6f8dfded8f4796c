"""The order examples are trained in: shuffled per epoch, grouped by length, split into steps.

The order depends only on the seed, the epoch and the effective batch (batch_size x
gradient_accumulation_steps), so a resumed run sees exactly the examples an uninterrupted one
would, and batch 8 x accumulation 1 trains on the same examples per step as 4 x 2.
Length grouping: within a window of many steps, examples are sorted by length before being cut
into steps, so a step's rows are of similar length and packing wastes little; the steps are then
shuffled so training does not go from long to short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Steps whose examples are sorted by length together.
GROUP_WINDOW_STEPS = 32


def steps_per_epoch(n_examples: int, effective_batch: int) -> int:
    return math.ceil(n_examples / effective_batch)


def epoch_steps(lengths: Sequence[int], effective_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices for each optimizer step of `epoch` (the last step may be smaller)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    window = effective_batch * GROUP_WINDOW_STEPS
    steps: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        group = [chunk[k : k + effective_batch] for k in range(0, len(chunk), effective_batch)]
        # Keep the (possibly short) last step of the epoch last; shuffle the full ones.
        full = [s for s in group if len(s) == effective_batch]
        partial = [s for s in group if len(s) != effective_batch]
        perm = torch.randperm(len(full), generator=g).tolist()
        steps.extend(full[p] for p in perm)
        steps.extend(partial)
    # A short step can only come from the last window; move any to the very end.
    return [s for s in steps if len(s) == effective_batch] + [s for s in steps if len(s) != effective_batch]


def micro_batches(step: list[int], batch_size: int) -> list[list[int]]:
    return [step[k : k + batch_size] for k in range(0, len(step), batch_size)]
