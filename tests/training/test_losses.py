"""Losses checked against values derived by hand (torchtune's test_dpo_loss.py is the model).

Shared numbers, beta = 0.1 unless a test says otherwise:
    pair 0: policy (chosen, rejected) = (-10, -20), reference = (-12, -18), tokens (4, 2)
            h_c = 2, h_r = -2, delta = 4
    pair 1: policy (-5, -5), reference (-4, -6), tokens (1, 4)
            h_c = -1, h_r = 1, delta = -2
Useful identity: log sigma(-x) = log sigma(x) - x, and -log sigma(x) = log(1 + e^-x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from preftune.contracts.spec import TrainingSpec
from preftune.errors import TrainingError
from preftune.training.losses import (
    PREFERENCE_LOSSES,
    ExampleLogps,
    LossTerms,
    SequenceLogps,
    loss_for,
    step_normalisers,
)
from preftune.training.losses.rpo import RPO
from preftune.training.losses.sft import SFT
from preftune.training.tokenize import PairTokens, SFTTokens


@dataclass
class Out:
    """One batch's loss (its terms over its own normalisers) and its metrics."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    terms: LossTerms


def preference_loss(policy: SequenceLogps, reference: SequenceLogps | None, spec: TrainingSpec) -> Out:
    terms = loss_for(spec)(policy, reference)  # type: ignore[arg-type]
    return Out(terms.mean(), terms.metrics, terms)


def sft_loss(sums: torch.Tensor, tokens: torch.Tensor) -> Out:
    terms = SFT()(ExampleLogps(sums, tokens), None)
    return Out(terms.mean(), terms.metrics, terms)


def logps(
    chosen: list[float], rejected: list[float], n_c: list[float], n_r: list[float], grad: bool = False
) -> SequenceLogps:
    return SequenceLogps(
        chosen=torch.tensor(chosen, requires_grad=grad),
        rejected=torch.tensor(rejected, requires_grad=grad),
        chosen_tokens=torch.tensor(n_c),
        rejected_tokens=torch.tensor(n_r),
    )


def policy(grad: bool = False) -> SequenceLogps:
    return logps([-10.0, -5.0], [-20.0, -5.0], [4.0, 1.0], [2.0, 4.0], grad)


def reference() -> SequenceLogps:
    return logps([-12.0, -4.0], [-18.0, -6.0], [4.0, 1.0], [2.0, 4.0])


def spec(**params: object) -> TrainingSpec:
    return TrainingSpec.from_params(params)


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def assert_close(t: torch.Tensor, expected: list[float] | float, tol: float = 1e-6) -> None:
    torch.testing.assert_close(t, torch.tensor(expected, dtype=torch.float32), atol=tol, rtol=0)


def test_sigmoid_dpo_values_and_metrics() -> None:
    """beta*delta = (0.4, -0.2): losses log(1+e^-0.4) = 0.513015 and log(1+e^0.2) = 0.798139, mean 0.655577.
    rewards/chosen = beta*h_c = (0.2, -0.1), rewards/rejected = (-0.2, 0.1), margins (0.4, -0.2)."""
    out = preference_loss(policy(), reference(), spec(dpo_beta=0.1))
    assert isinstance(out.terms, LossTerms)
    assert out.loss.shape == ()
    assert_close(out.loss, (softplus(-0.4) + softplus(0.2)) / 2)
    assert_close(out.loss, 0.655577, tol=1e-6)
    assert_close(out.metrics["rewards/chosen"], [0.2, -0.1])
    assert_close(out.metrics["rewards/rejected"], [-0.2, 0.1])
    assert_close(out.metrics["rewards/margins"], [0.4, -0.2])
    assert_close(out.metrics["rewards/accuracies"], [1.0, 0.0])
    assert_close(out.metrics["logps/chosen"], [-10.0, -5.0])
    assert_close(out.metrics["logps/rejected"], [-20.0, -5.0])
    assert "nll" not in out.metrics


def test_robust_dpo_label_smoothing() -> None:
    """Robust loss = (-(1-e) log s(x) + e log s(-x)) / (1-2e) = -log s(x) - e*x/(1-2e) (identity above).
    e = 0.1: pair 0: 0.513015 - 0.1*0.4/0.8 = 0.463015; pair 1: 0.798139 + 0.1*0.2/0.8 = 0.823139."""
    out = preference_loss(policy(), reference(), spec(dpo_beta=0.1, dpo_label_smoothing=0.1))
    expected = ((softplus(-0.4) - 0.05) + (softplus(0.2) + 0.025)) / 2
    assert_close(out.loss, expected)
    assert_close(out.loss, (0.463015 + 0.823139) / 2, tol=2e-6)
    # Rewards do not depend on the loss.
    assert_close(out.metrics["rewards/margins"], [0.4, -0.2])


def test_length_normalised_dpo() -> None:
    """Per-token log-ratios: pair 0: 2/4 - (-2)/2 = 1.5; pair 1: -1/1 - 1/4 = -1.25.
    Loss mean(log(1+e^-0.15), log(1+e^0.125)); rewards stay beta * summed log-ratios, as TRL logs them."""
    out = preference_loss(policy(), reference(), spec(dpo_beta=0.1, dpo_normalize_logratios_by_length=True))
    assert_close(out.loss, (softplus(-0.15) + softplus(0.125)) / 2)
    assert_close(out.metrics["rewards/chosen"], [0.2, -0.1])
    assert_close(out.metrics["rewards/margins"], [0.4, -0.2])


def test_ipo_is_per_token_and_ignores_normalise_flag() -> None:
    """IPO target 1/(2 beta) = 5. Per-token deltas (1.5, -1.25): losses (1.5-5)^2 = 12.25, (-6.25)^2 = 39.0625."""
    out = preference_loss(policy(), reference(), spec(dpo_beta=0.1, dpo_loss_type="ipo"))
    assert_close(out.loss, (12.25 + 39.0625) / 2, tol=1e-5)
    flagged = preference_loss(
        policy(), reference(), spec(dpo_beta=0.1, dpo_loss_type="ipo", dpo_normalize_logratios_by_length=True)
    )
    assert_close(flagged.loss, out.loss.item(), tol=0)


def test_hinge() -> None:
    """max(0, 1 - beta*delta): pair 0: 1 - 0.4 = 0.6; pair 1: 1 + 0.2 = 1.2; mean 0.9.
    With beta = 1 pair 0 is beyond the margin (1 - 4 < 0) and contributes 0: mean (0 + 3)/2 = 1.5."""
    out = preference_loss(policy(), reference(), spec(dpo_beta=0.1, dpo_loss_type="hinge"))
    assert_close(out.loss, 0.9)
    saturated = preference_loss(policy(), reference(), spec(dpo_beta=1.0, dpo_loss_type="hinge"))
    assert_close(saturated.loss, 1.5)


def test_simpo_values_and_metrics() -> None:
    """beta = 2, gamma = 1. Pair 0: -10/4 - (-20/2) = 7.5 -> x = 15 - 1 = 14; pair 1: -5 - (-1.25) = -3.75
    -> x = -8.5. Loss mean(log(1+e^-14), log(1+e^8.5)). Rewards beta * per-token averages: (-5, -10) and
    (-20, -2.5); logps/* are the per-token averages (TRL CPOTrainer's meaning for SimPO)."""
    simpo = spec(dpo_beta=2.0, simpo_gamma=1.0)
    assert not simpo.needs_reference
    out = preference_loss(policy(), None, simpo)
    assert_close(out.loss, (softplus(-14.0) + softplus(8.5)) / 2, tol=1e-5)
    assert_close(out.metrics["rewards/chosen"], [-5.0, -10.0])
    assert_close(out.metrics["rewards/rejected"], [-20.0, -2.5])
    assert_close(out.metrics["rewards/accuracies"], [1.0, 0.0])
    assert_close(out.metrics["logps/chosen"], [-2.5, -5.0])
    assert_close(out.metrics["logps/rejected"], [-10.0, -1.25])


def test_simpo_label_smoothing_is_robust_not_trl_conservative() -> None:
    """Deliberate difference: preftune uses the robust form for SimPO too; TRL's CPO uses the conservative
    -(1-e) log s(x) - e log s(-x). One pair with x = 14 (pair 0 above), e = 0.2:
    robust = log(1+e^-14) - 0.2*14/0.6; conservative = 0.8 log(1+e^-14) + 0.2 log(1+e^14)."""
    one = logps([-10.0], [-20.0], [4.0], [2.0])
    out = preference_loss(one, None, spec(dpo_beta=2.0, simpo_gamma=1.0, dpo_label_smoothing=0.2))
    assert_close(out.loss, softplus(-14.0) - 0.2 * 14 / 0.6, tol=1e-5)
    conservative = 0.8 * softplus(-14.0) + 0.2 * softplus(14.0)
    assert abs(out.loss.item() - conservative) > 1.0


def test_rpo_adds_token_weighted_nll() -> None:
    """NLL over the chosen tokens of the micro-batch: (10 + 5) / (4 + 1) = 3 (not the mean of per-pair
    averages, (2.5 + 5)/2 = 3.75). alpha = 0.5: loss = sigmoid DPO 0.655577 + 1.5. Metric nll per pair (2.5, 5)."""
    out = preference_loss(policy(), reference(), spec(dpo_beta=0.1, rpo_alpha=0.5))
    assert_close(out.loss, (softplus(-0.4) + softplus(0.2)) / 2 + 1.5)
    assert_close(out.metrics["nll"], [2.5, 5.0])


def test_rpo_with_simpo() -> None:
    out = preference_loss(policy(), None, spec(dpo_beta=2.0, simpo_gamma=1.0, rpo_alpha=1.0))
    assert_close(out.loss, (softplus(-14.0) + softplus(8.5)) / 2 + 3.0, tol=1e-5)


def test_sft_loss_is_token_weighted() -> None:
    """logps (-6, -3) over (3, 1) tokens: loss 9/4 = 2.25; per-example nll (2, 3)."""
    out = sft_loss(torch.tensor([-6.0, -3.0]), torch.tensor([3.0, 1.0]))
    assert_close(out.loss, 2.25)
    assert_close(out.metrics["nll"], [2.0, 3.0])


def test_sigmoid_gradient_matches_formula() -> None:
    """d loss / d pi_c = -beta * sigma(-beta*delta) / B and d loss / d pi_r = +beta * sigma(-beta*delta) / B."""
    pol = policy(grad=True)
    out = preference_loss(pol, reference(), spec(dpo_beta=0.1))
    out.loss.backward()
    s = torch.sigmoid(torch.tensor([-0.4, 0.2]))
    assert pol.chosen.grad is not None and pol.rejected.grad is not None
    assert_close(pol.chosen.grad, (-0.1 * s / 2).tolist())
    assert_close(pol.rejected.grad, (0.1 * s / 2).tolist())


def test_simpo_gradient_is_per_token() -> None:
    """d/d pi_c of -log s(beta*(pi_c/n_c - pi_r/n_r) - gamma) = -(beta/n_c) * s(-x) / B."""
    pol = policy(grad=True)
    preference_loss(pol, None, spec(dpo_beta=2.0, simpo_gamma=1.0)).loss.backward()
    s = torch.sigmoid(torch.tensor([-14.0, 8.5]))
    assert pol.chosen.grad is not None
    assert_close(pol.chosen.grad, (-(2.0 / torch.tensor([4.0, 1.0])) * s / 2).tolist())


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"dpo_label_smoothing": 0.2},
        {"dpo_normalize_logratios_by_length": True},
        {"dpo_loss_type": "ipo"},
        {"dpo_loss_type": "hinge"},
        {"rpo_alpha": 1.0},
        {"simpo_gamma": 0.5, "dpo_beta": 2.0},
    ],
)
def test_every_variant_pushes_chosen_up_and_rejected_down(params: dict[str, object]) -> None:
    pol = logps([-10.0, -8.0], [-10.0, -9.0], [5.0, 4.0], [5.0, 6.0], grad=True)
    ref = logps([-10.0, -8.0], [-10.0, -9.0], [5.0, 4.0], [5.0, 6.0])
    s = spec(**params)
    out = preference_loss(pol, ref if s.needs_reference else None, s)
    out.loss.backward()
    assert pol.chosen.grad is not None and pol.rejected.grad is not None
    assert (pol.chosen.grad < 0).all()
    assert (pol.rejected.grad > 0).all()
    assert torch.isfinite(out.loss)
    for name, value in out.metrics.items():
        assert value.shape == (2,), name
        assert not value.requires_grad, name


@settings(max_examples=50, deadline=None)
@given(st.floats(-500, 0), st.floats(-500, 0), st.floats(-500, 0), st.floats(-500, 0), st.floats(0.01, 2.0))
def test_sigmoid_swap_identity(pc: float, pr: float, rc: float, rr: float, beta: float) -> None:
    """Swapping the labels turns -log s(x) into -log s(-x) = -log s(x) + x, so the difference is beta*delta."""
    n = [3.0]
    s = spec(dpo_beta=beta)
    forward = preference_loss(logps([pc], [pr], n, n), logps([rc], [rr], n, n), s).loss
    swapped = preference_loss(logps([pr], [pc], n, n), logps([rr], [rc], n, n), s).loss
    delta = (pc - rc) - (pr - rr)
    torch.testing.assert_close(
        swapped - forward, torch.tensor(beta * delta, dtype=torch.float32), atol=1e-3, rtol=1e-4
    )


def test_bf16_inputs_give_float32_outputs() -> None:
    pol = logps([-10.0], [-20.0], [4.0], [2.0])
    ref = logps([-12.0], [-18.0], [4.0], [2.0])
    half = SequenceLogps(
        *(t.to(torch.bfloat16) for t in (pol.chosen, pol.rejected, pol.chosen_tokens, pol.rejected_tokens))
    )
    out = preference_loss(half, ref, spec())
    assert out.loss.dtype == torch.float32
    assert_close(out.loss, softplus(-0.4))


def test_reference_required_unless_simpo() -> None:
    with pytest.raises(TrainingError, match="reference"):
        preference_loss(policy(), None, spec())


def test_mismatched_batch_sizes_are_named() -> None:
    with pytest.raises(TrainingError, match="2 pairs but reference has 1"):
        preference_loss(policy(), logps([-1.0], [-1.0], [1.0], [1.0]), spec())
    with pytest.raises(TrainingError, match="same length"):
        logps([-1.0, -2.0], [-1.0], [1.0], [1.0])


def test_sft_spec_gets_the_sft_loss() -> None:
    loss = loss_for(spec(training_method="sft"))
    assert isinstance(loss, SFT) and not loss.needs_reference


@pytest.mark.parametrize(
    ("params", "name", "needs_reference"),
    [
        ({}, "sigmoid", True),
        ({"dpo_normalize_logratios_by_length": True}, "length_normalized", True),
        ({"dpo_label_smoothing": 0.1}, "robust", True),
        ({"dpo_loss_type": "ipo"}, "ipo", True),
        ({"dpo_loss_type": "hinge"}, "hinge", True),
        # Together's flags: simpo_gamma turns on SimPO whatever the length flag says, and drops the reference.
        ({"simpo_gamma": 0.5}, "simpo", False),
        ({"simpo_gamma": 0.5, "dpo_normalize_logratios_by_length": True}, "simpo", False),
        ({"training_method": "sft"}, "sft", False),
    ],
)
def test_the_spec_resolves_one_method(params: dict[str, object], name: str, needs_reference: bool) -> None:
    s = spec(**params)
    assert s.loss_name == name
    loss = loss_for(s)
    assert loss.name == name and loss.needs_reference is needs_reference is s.needs_reference
    with_rpo = loss_for(spec(**params, rpo_alpha=1.0)) if name != "sft" else None
    if with_rpo is not None:
        assert isinstance(with_rpo, RPO) and with_rpo.base.name == name
        assert with_rpo.needs_reference is needs_reference


def test_every_preference_loss_has_a_module_named_after_it() -> None:
    import importlib

    for name, cls in PREFERENCE_LOSSES.items():
        module = importlib.import_module(f"preftune.training.losses.{name}")
        assert getattr(module, cls.__name__) is cls


@pytest.mark.parametrize("params", [{}, {"rpo_alpha": 0.5}, {"simpo_gamma": 1.0, "rpo_alpha": 1.0}])
def test_split_batches_add_up_to_the_whole_with_the_steps_normalisers(params: dict[str, object]) -> None:
    """RPO's NLL is per token over the whole step: two halves, each over the step's counts, sum to the
    whole batch's loss; each half's own mean (the old per-micro-batch weighting) would not."""
    s = spec(dpo_beta=0.1, **params)
    pol, ref = policy(), reference()
    whole = loss_for(s)(pol, ref)  # type: ignore[arg-type]
    pairs = [
        PairTokens(i, [1], [2] * int(pol.chosen_tokens[i]), [3] * int(pol.rejected_tokens[i]))
        for i in range(2)
    ]
    norms = step_normalisers(pairs)
    assert norms == {"pairs": 2.0, "chosen_tokens": 5.0, "target_tokens": 0.0}
    halves = [
        loss_for(s)(
            logps(
                [pol.chosen[i].item()],
                [pol.rejected[i].item()],
                [pol.chosen_tokens[i].item()],  # type: ignore[arg-type]
                [pol.rejected_tokens[i].item()],
            ),
            logps(
                [ref.chosen[i].item()],
                [ref.rejected[i].item()],
                [ref.chosen_tokens[i].item()],
                [ref.rejected_tokens[i].item()],
            ),
        )
        for i in range(2)
    ]
    assert_close(sum(h.scaled(norms) for h in halves), whole.mean().item(), tol=1e-6)  # type: ignore[arg-type]


def test_sft_normaliser_counts_labelled_targets_after_the_first_token() -> None:
    examples = [SFTTokens(1, [5, 6, 7], [True, True, False]), SFTTokens(2, [5, 6], [False, True])]
    assert step_normalisers(examples)["target_tokens"] == 2.0
