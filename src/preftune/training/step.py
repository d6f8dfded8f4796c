"""One optimizer step, the same however it is cut.

A step's examples are split into micro-batches (`batch_size`, gradient accumulation) and those into
passes that fit the memory plan (`tokens_per_forward`). The step's normalisers (pairs, answer tokens)
are counted from all its examples first; every pass backpropagates its loss terms divided by those
totals (`LossTerms.scaled`), so the gradients add up to the whole step's loss exactly, whatever the
cut. Evaluation runs the same accumulation without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from preftune.training.losses import LossTerms


@dataclass
class StepTotals:
    """What one accumulated step (or evaluation pass) adds up to."""

    loss: float = 0.0
    tokens: int = 0
    metrics: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def mean_metrics(self) -> dict[str, float]:
        """Per-example metrics averaged over every example of the step."""
        return {
            key: float(torch.cat(values).float().mean()) for key, values in self.metrics.items() if values
        }


class Stopped(Exception):
    """`should_stop()` said yes in the middle of a step or an evaluation."""


def accumulate(
    passes: list[list[int]],
    normalisers: Mapping[str, float],
    compute: Callable[[list[int]], tuple[LossTerms, int]],
    should_stop: Callable[[], bool],
) -> StepTotals:
    """Run `compute` (the loss terms and token count of some examples) on each pass, backpropagate
    each pass's share of the step's loss when gradients are on, and add everything up.

    Raises `Stopped` before a pass when `should_stop()`; the gradients of a stopped step are discarded
    by the caller."""
    totals = StepTotals()
    for ids in passes:
        if should_stop():
            raise Stopped
        terms, tokens = compute(ids)
        share = terms.scaled(normalisers)
        if share.requires_grad:
            share.backward()
        totals.loss += float(share.detach())
        totals.tokens += tokens
        for key, value in terms.metrics.items():
            totals.metrics.setdefault(key, []).append(value.detach().float().cpu())
    return totals


def clip_and_step(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, max_grad_norm: float
) -> tuple[float, float]:
    """Clip the accumulated gradients, take the optimizer and scheduler steps, clear the gradients.

    Returns (gradient norm before clipping, the learning rate the step used)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float(
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    )
    lr = float(scheduler.get_last_lr()[0])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr
