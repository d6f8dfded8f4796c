"""SFT: the per-token NLL of the target tokens, -sum(log p) / (the step's target tokens), token-weighted
like transformers' causal-LM loss and TRL's SFTTrainer. Metric `nll`: per example, -sums / tokens."""

from __future__ import annotations

from preftune.contracts.spec import TrainingSpec
from preftune.training.losses.base import ExampleLogps, Loss, LossTerms, Term


class SFT(Loss[ExampleLogps]):
    name = "sft"
    needs_reference = False

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> SFT:
        return cls()

    def __call__(self, policy: ExampleLogps, reference: ExampleLogps | None = None) -> LossTerms:
        nll = (-policy.sums.float() / policy.tokens.float().clamp(min=1.0)).detach()
        tokens = float(policy.tokens.sum())
        return LossTerms(
            terms=[Term(-policy.sums.float().sum(), "target_tokens", tokens)], metrics={"nll": nll}
        )
