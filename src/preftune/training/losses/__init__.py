"""The training objectives, one module a method; `loss_for(spec)` builds the one a spec asks for.

`TrainingSpec.loss_name` resolves the method once from the hosted services' flags (see its doc);
`rpo_alpha > 0` adds the chosen NLL to any preference loss (`rpo.RPO`). Adding a method is adding
a module here, its name in `TrainingSpec.loss_name`, and a test.
"""

from __future__ import annotations

from preftune.contracts.spec import TrainingSpec
from preftune.training.losses.base import (
    ExampleLogps,
    Loss,
    LossTerms,
    PreferenceLoss,
    SequenceLogps,
    Term,
    step_normalisers,
)
from preftune.training.losses.hinge import Hinge
from preftune.training.losses.ipo import IPO
from preftune.training.losses.length_normalized import LengthNormalizedDPO
from preftune.training.losses.robust import RobustDPO
from preftune.training.losses.rpo import RPO
from preftune.training.losses.sft import SFT
from preftune.training.losses.sigmoid import SigmoidDPO
from preftune.training.losses.simpo import SimPO

PREFERENCE_LOSSES: dict[str, type[PreferenceLoss]] = {
    cls.name: cls for cls in (SigmoidDPO, LengthNormalizedDPO, RobustDPO, IPO, Hinge, SimPO)
}

__all__ = [
    "PREFERENCE_LOSSES",
    "ExampleLogps",
    "Loss",
    "LossTerms",
    "SequenceLogps",
    "Term",
    "loss_for",
    "preference_base",
    "step_normalisers",
]


def preference_base(spec: TrainingSpec) -> PreferenceLoss:
    """The pair loss of a DPO-family spec, without RPO's extra term."""
    return PREFERENCE_LOSSES[spec.loss_name].from_spec(spec)  # type: ignore[return-value]


def loss_for(spec: TrainingSpec) -> Loss[SequenceLogps] | Loss[ExampleLogps]:
    """The objective `spec` asks for."""
    if spec.loss_name == "sft":
        return SFT.from_spec(spec)
    if spec.rpo_alpha > 0:
        return RPO.from_spec(spec)
    return preference_base(spec)
