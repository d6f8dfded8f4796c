"""Sigmoid DPO (Rafailov et al.): -log sigma(beta * (h_c - h_r))."""

from __future__ import annotations

import torch

from preftune.contracts.spec import TrainingSpec
from preftune.training.losses.base import PreferenceLoss, SequenceLogps, logratio_delta, require, sigmoid_loss


class SigmoidDPO(PreferenceLoss):
    name = "sigmoid"
    per_token = False

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> SigmoidDPO:
        return cls(spec.dpo_beta)

    def per_pair(self, policy: SequenceLogps, reference: SequenceLogps | None) -> torch.Tensor:
        delta = logratio_delta(policy, require(reference, self.name), per_token=self.per_token)
        return sigmoid_loss(self.beta * delta)
