"""Length-normalised DPO (`dpo_normalize_logratios_by_length`, TRL's "sigmoid_norm"):
-log sigma(beta * (h_c/n_c - h_r/n_r)), so a long answer is not favoured for its length."""

from __future__ import annotations

from preftune.contracts.spec import TrainingSpec
from preftune.training.losses.sigmoid import SigmoidDPO


class LengthNormalizedDPO(SigmoidDPO):
    name = "length_normalized"
    per_token = True

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> LengthNormalizedDPO:
        return cls(spec.dpo_beta)
