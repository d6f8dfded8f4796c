"""Learning-rate schedule: linear warmup, then linear / cosine decay to `min_lr_ratio`, or constant."""

from __future__ import annotations

import math

import torch

from preftune.contracts.spec import TrainingSpec


def warmup_steps(spec: TrainingSpec, total_steps: int) -> int:
    return math.ceil(spec.warmup_ratio * total_steps)


def lr_factor(step: int, total_steps: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based).

    Warmup ramps up to the peak at step `warmup - 1` (never a zero-LR step); the decay then reaches
    `min_ratio` after the last step.
    """
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(1.0, progress)
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: TrainingSpec, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = warmup_steps(spec, total_steps)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup, spec.lr_scheduler_type, spec.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
