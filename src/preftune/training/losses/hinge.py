"""SLiC hinge (Zhao et al., TRL's "hinge"): max(0, 1 - beta * delta); delta per token with
`dpo_normalize_logratios_by_length`."""

from __future__ import annotations

import torch

from preftune.contracts.spec import TrainingSpec
from preftune.training.losses.base import PreferenceLoss, SequenceLogps, logratio_delta, require


class Hinge(PreferenceLoss):
    name = "hinge"

    def __init__(self, beta: float, per_token: bool) -> None:
        super().__init__(beta)
        self.per_token = per_token

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> Hinge:
        return cls(spec.dpo_beta, spec.dpo_normalize_logratios_by_length)

    def per_pair(self, policy: SequenceLogps, reference: SequenceLogps | None) -> torch.Tensor:
        delta = logratio_delta(policy, require(reference, self.name), per_token=self.per_token)
        return torch.relu(1.0 - self.beta * delta)
