"""How many tokens go through one forward pass, and whether activations must be recomputed.

A preference loss is a mean over pairs, so a step's pairs can go through the model in several
forward/backward passes whose gradients add up to exactly the step's gradient (the trainer weighs
each pass by its share of the step). That is the cheap way to bound memory: activations kept for
the backward pass grow with the tokens of one pass, and splitting costs no compute, where
activation checkpointing recomputes the forward pass (about a third more work). So:

- `tokens_per_forward` (auto): as many tokens as fit in half the free memory, at most
  `DEFAULT_TOKENS_PER_FORWARD`: matmuls over 2k tokens already run at full speed, more only
  costs memory;
- `gradient_checkpointing` (auto): only when even one example, alone, would not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_TOKENS_PER_FORWARD = 2048
# Share of the free memory (RAM on CPU, device memory on GPU) the kept activations may take.
MEMORY_FRACTION = 0.5
MIN_TOKENS_PER_FORWARD = 256


@dataclass(frozen=True)
class MemoryPlan:
    tokens_per_forward: int
    gradient_checkpointing: bool
    bytes_per_token: int  # activations kept for the backward pass, per token (estimate)
    free_bytes: int


def free_memory(device: torch.device) -> int:
    """Bytes this process could still allocate on `device`."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3  # no /proc (not Linux): assume a modest machine


def activation_bytes_per_token(config: Any, *, checkpointing: bool, element_bytes: int = 4) -> int:
    """Activations autograd keeps per token, from the model's shape.

    Per decoder layer, measured on Llama-style layers with LoRA on every linear layer: about 16
    hidden-size vectors (norm inputs and outputs, projections, rotary, attention in/out) and 6
    intermediate-size ones (the MLP's gate, up, activation and product). With checkpointing only
    each layer's input stays, plus one layer's worth during its recomputation.
    """
    hidden = int(config.hidden_size)
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    layers = int(config.num_hidden_layers)
    per_layer = 16 * hidden + 6 * intermediate
    kept = layers * hidden + per_layer if checkpointing else layers * per_layer
    return kept * element_bytes


def plan_memory(
    config: Any,
    device: torch.device,
    *,
    longest_example: int,
    tokens_per_forward: int | str,
    gradient_checkpointing: bool | str,
    free_bytes: int | None = None,
) -> MemoryPlan:
    """Resolve the two `auto` knobs for a model of `config` on `device`."""
    free = free_memory(device) if free_bytes is None else free_bytes
    budget = free * MEMORY_FRACTION
    if isinstance(gradient_checkpointing, bool):
        checkpointing = gradient_checkpointing
    else:
        checkpointing = longest_example * activation_bytes_per_token(config, checkpointing=False) > budget
    per_token = activation_bytes_per_token(config, checkpointing=checkpointing)
    if isinstance(tokens_per_forward, int):
        tokens = tokens_per_forward
    else:
        fits = math.floor(budget / per_token)
        tokens = max(MIN_TOKENS_PER_FORWARD, min(DEFAULT_TOKENS_PER_FORWARD, fits))
    return MemoryPlan(tokens, checkpointing, per_token, free)


def split_by_tokens(ids: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Cut `ids` (in order) into runs of at most `max_tokens` tokens, about equal in size.

    An example longer than `max_tokens` gets a run of its own. Equal sizes rather than greedy
    filling: two passes of 2,600 tokens keep less memory alive than 4,000 + 1,200.
    """
    total = sum(lengths[i] for i in ids)
    if total <= max_tokens or len(ids) <= 1:
        return [list(ids)]
    target = total / math.ceil(total / max_tokens)
    runs: list[list[int]] = [[]]
    size = 0
    for i in ids:
        n = lengths[i]
        if runs[-1] and (size + n > max_tokens or size + n / 2 > target):
            runs.append([])
            size = 0
        runs[-1].append(i)
        size += n
    return runs
