"""RPO (Pang et al.; TRL's `rpo_alpha` / "sft" term): any preference loss plus alpha times the NLL of
the chosen answers, per token over all of the step's chosen tokens:

    loss = sum_i base_i / n_pairs + alpha * (-sum_i pi_c,i) / sum_i n_c,i

Token-weighted like TRL's term (a long answer weighs more than a short one), and divided by the
step's token count, never a micro-batch's, so the memory plan cannot change it. Metric `nll`:
-pi_c / n_c per pair."""

from __future__ import annotations

from preftune.contracts.spec import TrainingSpec
from preftune.training.losses.base import Loss, LossTerms, PreferenceLoss, SequenceLogps, Term


class RPO(Loss[SequenceLogps]):
    name = "rpo"

    def __init__(self, base: PreferenceLoss, alpha: float) -> None:
        self.base = base
        self.alpha = alpha
        self.needs_reference = base.needs_reference  # type: ignore[misc]

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> RPO:
        from preftune.training.losses import preference_base

        return cls(preference_base(spec), spec.rpo_alpha)

    def __call__(self, policy: SequenceLogps, reference: SequenceLogps | None) -> LossTerms:
        out = self.base(policy, reference)
        tokens = float(policy.chosen_tokens.sum())
        out.terms.append(Term(-policy.chosen.float().sum(), "chosen_tokens", tokens, weight=self.alpha))
        out.metrics["nll"] = (-policy.chosen_mean()).detach()
        return out
