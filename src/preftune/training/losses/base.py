"""What every loss shares: typed log-probability inputs, sums with their normalisers, TRL's metrics.

A loss never returns a mean. It returns each term's **sum** over the examples it was given and
the **normaliser** that sum is to be divided by (`pairs`, or a count of tokens). The step adds the
normalisers of all its pieces before any forward pass and divides once (`training/step.py`), so
one optimizer step computes the same objective however it is cut into micro-batches, memory-sized
passes or ranks. (A per-micro-batch mean weighted by pairs, as before, changed RPO's token-weighted
NLL with the memory plan.)

Notation, per pair i: pi_c, pi_r policy log-prob sums of the chosen / rejected answer; ref_c, ref_r
the reference's; n_c, n_r token counts; h = pi - ref (log-ratios).

Metrics keep TRL's names and meanings (DPOTrainer; CPOTrainer for SimPO), per pair and detached:
rewards/chosen = beta * h_c, rewards/rejected = beta * h_r, rewards/margins, rewards/accuracies
(1 where chosen > rejected), logps/chosen, logps/rejected.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Literal, TypeVar

import torch
import torch.nn.functional as F

from preftune.contracts.spec import TrainingSpec
from preftune.errors import TrainingError
from preftune.training.tokenize import PairTokens, SFTTokens

Normaliser = Literal["pairs", "chosen_tokens", "target_tokens"]


@dataclass
class SequenceLogps:
    """Per-pair tensors of shape [B]: log-prob sums of each answer and their token counts (float)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {t.shape for t in (self.chosen, self.rejected, self.chosen_tokens, self.rejected_tokens)}
        if len(shapes) != 1 or self.chosen.dim() != 1:
            raise TrainingError(
                "SequenceLogps needs four 1-D tensors of the same length [B]; got shapes "
                f"chosen={tuple(self.chosen.shape)}, rejected={tuple(self.rejected.shape)}, "
                f"chosen_tokens={tuple(self.chosen_tokens.shape)}, rejected_tokens={tuple(self.rejected_tokens.shape)}"
            )

    @classmethod
    def interleaved(cls, sums: torch.Tensor, counts: torch.Tensor) -> SequenceLogps:
        """From `sequence_logps`' [2B] layout (chosen, rejected, chosen, ...)."""
        return cls(sums[0::2], sums[1::2], counts[0::2], counts[1::2])

    def chosen_mean(self) -> torch.Tensor:
        """pi_c / n_c: the chosen answer's per-token average log-prob (n clamped to >= 1, as TRL does)."""
        return self.chosen.float() / self.chosen_tokens.float().clamp(min=1.0)

    def rejected_mean(self) -> torch.Tensor:
        """pi_r / n_r."""
        return self.rejected.float() / self.rejected_tokens.float().clamp(min=1.0)


@dataclass
class ExampleLogps:
    """SFT: per-example log-prob sums over the target tokens and their counts, shape [B]."""

    sums: torch.Tensor
    tokens: torch.Tensor

    def __post_init__(self) -> None:
        if self.sums.dim() != 1 or self.sums.shape != self.tokens.shape:
            raise TrainingError(
                f"ExampleLogps needs two 1-D tensors of the same length; got {tuple(self.sums.shape)} "
                f"and {tuple(self.tokens.shape)}"
            )


@dataclass
class Term:
    """One summed term of a loss: divided by the step's `normaliser` count, times `weight`.

    `count` is this batch's own share of that normaliser (for `LossTerms.mean`)."""

    total: torch.Tensor
    normaliser: Normaliser
    count: float
    weight: float = 1.0


@dataclass
class LossTerms:
    """A loss over some examples: its summed terms, and per-example [B] metrics (detached)."""

    terms: list[Term]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def scaled(self, normalisers: Mapping[str, float]) -> torch.Tensor:
        """This batch's share of the step's loss: each term over the whole step's normaliser."""
        return sum(  # type: ignore[return-value]
            (t.weight * t.total / max(normalisers[t.normaliser], 1.0) for t in self.terms),
            torch.zeros((), device=self.terms[0].total.device),
        )

    def mean(self) -> torch.Tensor:
        """The loss of this batch alone (each term over its own count), as a scalar."""
        return self.scaled({t.normaliser: t.count for t in self.terms})


def step_normalisers(examples: Sequence[PairTokens | SFTTokens]) -> dict[str, float]:
    """The counts every term of a step is divided by, from the step's examples (before any forward)."""
    pairs = [e for e in examples if isinstance(e, PairTokens)]
    sft = [e for e in examples if isinstance(e, SFTTokens)]
    return {
        "pairs": float(len(pairs)),
        "chosen_tokens": float(sum(len(e.chosen) for e in pairs)),
        # The first token predicts nothing: targets are labelled positions after it (see `pack`).
        "target_tokens": float(sum(sum(e.labels[1:]) for e in sft)),
    }


InputT = TypeVar("InputT", SequenceLogps, ExampleLogps)


class Loss(abc.ABC, Generic[InputT]):
    """A training objective over typed log-probs. Subclasses set `name` and `needs_reference`."""

    name: ClassVar[str]
    needs_reference: ClassVar[bool] = True

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: TrainingSpec) -> Loss[InputT]:
        """The loss with its knobs read from `spec`."""

    @abc.abstractmethod
    def __call__(self, policy: InputT, reference: InputT | None) -> LossTerms:
        """Summed terms and metrics for these examples."""


class PreferenceLoss(Loss[SequenceLogps]):
    """A loss over pairs; `per_pair` says what one pair costs, the rest is shared."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    @abc.abstractmethod
    def per_pair(self, policy: SequenceLogps, reference: SequenceLogps | None) -> torch.Tensor:
        """The loss of each pair, [B]."""

    def rewards(
        self, policy: SequenceLogps, reference: SequenceLogps | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rewards/chosen, rewards/rejected, logps/chosen, logps/rejected) as TRL logs them."""
        h_c, h_r = log_ratios(policy, require(reference, self.name))
        return self.beta * h_c, self.beta * h_r, policy.chosen, policy.rejected

    def __call__(self, policy: SequenceLogps, reference: SequenceLogps | None) -> LossTerms:
        if self.needs_reference:
            ref = require(reference, self.name)
            if ref.chosen.shape != policy.chosen.shape:
                raise TrainingError(
                    f"{self.name}: policy has {policy.chosen.shape[0]} pairs but reference has "
                    f"{ref.chosen.shape[0]}"
                )
        per_pair = self.per_pair(policy, reference)
        n = float(per_pair.shape[0])
        return LossTerms(
            terms=[Term(per_pair.sum(), "pairs", n)],
            metrics=reward_metrics(*self.rewards(policy, reference)),
        )


def require(reference: SequenceLogps | None, name: str) -> SequenceLogps:
    if reference is None:
        raise TrainingError(
            f"the {name} loss needs reference log-probs (only SimPO and SFT are reference-free)"
        )
    return reference


def log_ratios(policy: SequenceLogps, reference: SequenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """(h_c, h_r) = (pi_c - ref_c, pi_r - ref_r), in float32."""
    return (
        policy.chosen.float() - reference.chosen.float(),
        policy.rejected.float() - reference.rejected.float(),
    )


def logratio_delta(policy: SequenceLogps, reference: SequenceLogps, *, per_token: bool) -> torch.Tensor:
    """delta = h_c - h_r, or h_c/n_c - h_r/n_r when `per_token` (TRL's sigmoid_norm and ipo scores)."""
    h_c, h_r = log_ratios(policy, reference)
    if per_token:
        h_c = h_c / policy.chosen_tokens.float().clamp(min=1.0)
        h_r = h_r / policy.rejected_tokens.float().clamp(min=1.0)
    return h_c - h_r


def sigmoid_loss(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """-log sigma(x), or with eps > 0 the robust DPO loss of Chowdhury et al. (TRL's "robust"):
    (-(1-eps) log sigma(x) + eps log sigma(-x)) / (1 - 2 eps), unbiased under label flips of rate eps."""
    if label_smoothing == 0.0:
        return -F.logsigmoid(logits)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


def reward_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """TRL's per-pair metrics from the rewards and the log-probs it reports (all detached, float32)."""
    chosen_rewards = chosen_rewards.detach().float()
    rejected_rewards = rejected_rewards.detach().float()
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": chosen_logps.detach().float(),
        "logps/rejected": rejected_logps.detach().float(),
    }
