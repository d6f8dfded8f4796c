"""One optimizer step, the same however it is cut.

A step's examples are split into micro-batches (`batch_size`, gradient accumulation) and those into
passes that fit the memory plan (`tokens_per_forward`). The step's normalisers (pairs, answer tokens)
are counted from all its examples first; every pass backpropagates its loss terms divided by those
totals (`LossTerms.scaled`), so the gradients add up to the whole step's loss exactly, whatever the
cut. Evaluation runs the same accumulation without gradients.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from preftune.training.losses import LossTerms


@dataclass
class StepTotals:
    """What one accumulated step (or evaluation pass) adds up to."""

    loss: float = 0.0
    tokens: int = 0
    # Per-example metrics as [sum, count] (float64 sums): added over passes, and over ranks.
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def add_metrics(self, metrics: Mapping[str, torch.Tensor], counted: bool = True) -> None:
        for key, value in metrics.items():
            entry = self.metrics.setdefault(key, [0.0, 0.0])
            if counted:
                entry[0] += float(value.detach().double().sum())
                entry[1] += float(value.numel())

    def mean_metrics(self) -> dict[str, float]:
        """Per-example metrics averaged over every example of the step."""
        return {key: total / count for key, (total, count) in self.metrics.items() if count}


class Stopped(Exception):
    """`should_stop()` said yes in the middle of a step or an evaluation."""


def accumulate(
    passes: list[list[int]],
    normalisers: Mapping[str, float],
    compute: Callable[[list[int]], tuple[LossTerms, int]],
    should_stop: Callable[[], bool],
    *,
    padding: int = 0,
    loss_scale: float = 1.0,
    grad_sync: Callable[[bool], contextlib.AbstractContextManager[Any]] | None = None,
) -> StepTotals:
    """Run `compute` (the loss terms and token count of some examples) on each pass, backpropagate
    each pass's share of the step's loss when gradients are on, and add everything up.

    With several processes (`training.distributed`): the last `padding` passes only keep this rank
    in step with the others (their share is multiplied by 0 and nothing of them is counted);
    `loss_scale` multiplies what is backpropagated (the world size, where gradients are averaged);
    `grad_sync(last)` is entered around each backward. Raises `Stopped` before a pass when
    `should_stop()`; the gradients of a stopped step are discarded by the caller."""
    totals = StepTotals()
    for k, ids in enumerate(passes):
        if should_stop():
            raise Stopped
        counted = k < len(passes) - padding
        terms, tokens = compute(ids)
        share = terms.scaled(normalisers)
        if not counted:
            share = share * 0.0
        if share.requires_grad:
            with grad_sync(k == len(passes) - 1) if grad_sync else contextlib.nullcontext():
                (share * loss_scale if loss_scale != 1.0 else share).backward()
        totals.loss += float(share.detach())
        totals.tokens += tokens if counted else 0
        totals.add_metrics(terms.metrics, counted)
    return totals


def clip_and_step(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, max_grad_norm: float
) -> tuple[float, float]:
    """Clip the accumulated gradients, take the optimizer and scheduler steps, clear the gradients.

    Returns (gradient norm before clipping, the learning rate the step used)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm: Any = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    lr = float(scheduler.get_last_lr()[0])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr
