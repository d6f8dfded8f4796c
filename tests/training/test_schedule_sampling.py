"""Learning-rate schedule and the training order (seeded, length-grouped, batch-split independent)."""

from __future__ import annotations

import itertools
import math

import pytest

from preftune.training.sampling import epoch_steps, micro_batches
from preftune.training.schedule import lr_factor


def test_warmup_reaches_peak_without_a_zero_step() -> None:
    factors = [lr_factor(s, 10, 4, "linear", 0.0) for s in range(4)]
    assert factors == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decay_ends_at_min_lr_ratio(kind: str) -> None:
    total = 20
    factors = [lr_factor(s, total, 2, kind, 0.1) for s in range(total + 1)]
    assert factors[1] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[1:])), "monotone decay"
    assert factors[total] == pytest.approx(0.1)
    assert min(factors[2:]) >= 0.1 - 1e-12


def test_cosine_midpoint_and_constant() -> None:
    assert lr_factor(5, 10, 0, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(9, 10, 0, "constant", 0.0) == 1.0


def test_order_is_seeded_and_covers_every_example_once() -> None:
    lengths = [(i * 37) % 101 for i in range(50)]
    steps = epoch_steps(lengths, 8, seed=3, epoch=0)
    assert steps == epoch_steps(lengths, 8, seed=3, epoch=0)
    assert steps != epoch_steps(lengths, 8, seed=3, epoch=1)
    assert sorted(i for s in steps for i in s) == list(range(50))
    assert [len(s) for s in steps] == [8] * 6 + [2], "only the last step is short"


def test_steps_group_similar_lengths() -> None:
    lengths = list(range(256))
    steps = epoch_steps(lengths, 8, seed=0, epoch=0)
    spread = sum(max(lengths[i] for i in s) - min(lengths[i] for i in s) for s in steps) / len(steps)
    assert spread < 16, "length grouping keeps each step's examples of similar length"


def test_micro_batches_split_a_step_in_order() -> None:
    assert micro_batches([5, 1, 4, 2, 3], 2) == [[5, 1], [4, 2], [3]]
