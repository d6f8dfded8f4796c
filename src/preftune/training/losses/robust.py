"""Robust DPO (Chowdhury et al., TRL's "robust"), `dpo_label_smoothing` = eps > 0:
(-(1-eps) log sigma(x) + eps log sigma(-x)) / (1 - 2 eps), x = beta * delta; unbiased when a share eps
of the preference labels is flipped. delta is per token with `dpo_normalize_logratios_by_length`."""

from __future__ import annotations

import torch

from preftune.contracts.spec import TrainingSpec
from preftune.training.losses.base import PreferenceLoss, SequenceLogps, logratio_delta, require, sigmoid_loss


class RobustDPO(PreferenceLoss):
    name = "robust"

    def __init__(self, beta: float, label_smoothing: float, per_token: bool) -> None:
        super().__init__(beta)
        self.label_smoothing = label_smoothing
        self.per_token = per_token

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> RobustDPO:
        return cls(spec.dpo_beta, spec.dpo_label_smoothing, spec.dpo_normalize_logratios_by_length)

    def per_pair(self, policy: SequenceLogps, reference: SequenceLogps | None) -> torch.Tensor:
        delta = logratio_delta(policy, require(reference, self.name), per_token=self.per_token)
        return sigmoid_loss(self.beta * delta, self.label_smoothing)
