"""IPO (Azar et al., eq. 17, tau = beta): (h_c/n_c - h_r/n_r - 1/(2 beta))^2.

Always on per-token log-ratios, as TRL and the IPO authors do, so
`dpo_normalize_logratios_by_length` changes nothing here."""

from __future__ import annotations

import torch

from preftune.contracts.spec import TrainingSpec
from preftune.training.losses.base import PreferenceLoss, SequenceLogps, logratio_delta, require


class IPO(PreferenceLoss):
    name = "ipo"

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> IPO:
        return cls(spec.dpo_beta)

    def per_pair(self, policy: SequenceLogps, reference: SequenceLogps | None) -> torch.Tensor:
        delta = logratio_delta(policy, require(reference, self.name), per_token=True)
        return (delta - 1.0 / (2.0 * self.beta)) ** 2
