"""The memory plan: passes per step by tokens, and checkpointing only when one example cannot fit."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from preftune.training.memory import (
    DEFAULT_TOKENS_PER_FORWARD,
    MIN_TOKENS_PER_FORWARD,
    activation_bytes_per_token,
    plan_memory,
    split_by_tokens,
)

# SmolLM2-135M's shape.
CONFIG = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
CPU = torch.device("cpu")
GIB = 1024**3


def test_split_keeps_order_and_stays_under_the_budget() -> None:
    lengths = [300, 700, 500, 200, 900, 400]
    runs = split_by_tokens(list(range(6)), lengths, 1000)
    assert [i for run in runs for i in run] == list(range(6))
    assert all(sum(lengths[i] for i in run) <= 1000 for run in runs)


def test_split_balances_the_passes() -> None:
    # 5,000 tokens under a 4,000 budget: two passes of about 2,500, not 4,000 + 1,000.
    lengths = [500] * 10
    runs = split_by_tokens(list(range(10)), lengths, 4000)
    assert [len(run) for run in runs] == [5, 5]


def test_an_example_over_the_budget_gets_its_own_pass() -> None:
    assert split_by_tokens([0, 1, 2], [100, 5000, 100], 1000) == [[0], [1], [2]]
    assert split_by_tokens([0], [10], 1) == [[0]]


def test_auto_plan_on_a_roomy_machine_uses_the_default_and_no_checkpointing() -> None:
    plan = plan_memory(
        CONFIG,
        CPU,
        longest_example=1024,
        tokens_per_forward="auto",
        gradient_checkpointing="auto",
        free_bytes=20 * GIB,
    )
    assert plan.tokens_per_forward == DEFAULT_TOKENS_PER_FORWARD
    assert not plan.gradient_checkpointing


def test_auto_plan_shrinks_passes_when_memory_is_short() -> None:
    per_token = activation_bytes_per_token(CONFIG, checkpointing=False)
    free = 2 * 1000 * per_token  # half of it holds 1,000 tokens
    plan = plan_memory(
        CONFIG,
        CPU,
        longest_example=600,
        tokens_per_forward="auto",
        gradient_checkpointing="auto",
        free_bytes=free,
    )
    assert plan.tokens_per_forward == 1000 and not plan.gradient_checkpointing


def test_checkpointing_only_when_one_example_cannot_fit() -> None:
    per_token = activation_bytes_per_token(CONFIG, checkpointing=False)
    plan = plan_memory(
        CONFIG,
        CPU,
        longest_example=1024,
        tokens_per_forward="auto",
        gradient_checkpointing="auto",
        free_bytes=1024 * per_token,  # half of it holds 512 tokens: the longest example does not fit
    )
    assert plan.gradient_checkpointing
    assert plan.bytes_per_token < per_token / 10
    assert plan.tokens_per_forward >= MIN_TOKENS_PER_FORWARD


def test_explicit_settings_win() -> None:
    plan = plan_memory(
        CONFIG,
        CPU,
        longest_example=10,
        tokens_per_forward=300,
        gradient_checkpointing=True,
        free_bytes=64 * GIB,
    )
    assert (plan.tokens_per_forward, plan.gradient_checkpointing) == (300, True)


def test_estimate_is_in_the_measured_range() -> None:
    # Measured on SmolLM2-135M with LoRA on all linear layers: about 2.3 MB kept per token.
    assert 1.8e6 < activation_bytes_per_token(CONFIG, checkpointing=False) < 2.8e6
