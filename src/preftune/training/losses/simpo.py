"""SimPO (Meng et al.): -log sigma(beta * (pi_c/n_c - pi_r/n_r) - gamma), reference-free.

`simpo_gamma` > 0 selects it, as on the hosted services: length normalisation is built in and no
reference model runs. Metrics as TRL's CPOTrainer: rewards = beta * pi/n, logps/* = pi/n.
Label smoothing uses the same robust (unbiased) form as DPO; TRL's CPOTrainer uses the conservative
form. At eps = 0, the default, they agree."""

from __future__ import annotations

import torch

from preftune.contracts.spec import TrainingSpec
from preftune.training.losses.base import PreferenceLoss, SequenceLogps, sigmoid_loss


class SimPO(PreferenceLoss):
    name = "simpo"
    needs_reference = False

    def __init__(self, beta: float, gamma: float, label_smoothing: float) -> None:
        super().__init__(beta)
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> SimPO:
        return cls(spec.dpo_beta, spec.simpo_gamma, spec.dpo_label_smoothing)

    def per_pair(self, policy: SequenceLogps, reference: SequenceLogps | None) -> torch.Tensor:
        margin = self.beta * (policy.chosen_mean() - policy.rejected_mean()) - self.gamma
        return sigmoid_loss(margin, self.label_smoothing)

    def rewards(
        self, policy: SequenceLogps, reference: SequenceLogps | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen, rejected = policy.chosen_mean(), policy.rejected_mean()
        return self.beta * chosen, self.beta * rejected, chosen, rejected
