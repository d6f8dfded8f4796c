"""Preference and SFT losses: pure functions of per-sequence log-probability sums and token counts.

The trainer computes, for every pair, the summed log-probability of the preferred ("chosen") and the
non-preferred ("rejected") answer under the policy and (except for SimPO) under the reference model,
plus the answers' token counts. Everything here is a small function of those tensors, so each loss is
checked by hand and against TRL on the same numbers (tests/training/test_losses.py, test_trl_parity.py).

Notation, per pair i (all tensors have shape [B]):
    pi_c, pi_r   policy log-prob sums of the chosen / rejected answer
    ref_c, ref_r reference log-prob sums
    n_c, n_r     answer token counts
    h_c = pi_c - ref_c, h_r = pi_r - ref_r  (log-ratios)
    delta = h_c - h_r                       (or h_c/n_c - h_r/n_r when normalised by length)

Losses (per pair, then averaged over the micro-batch):
    sigmoid DPO        -log sigma(beta * delta)
    robust DPO (eps>0) (-(1-eps) log sigma(beta*delta) + eps log sigma(-beta*delta)) / (1 - 2 eps)
    IPO                (h_c/n_c - h_r/n_r - 1/(2 beta))^2      (always per-token, as TRL and the IPO authors do)
    hinge (SLiC)       max(0, 1 - beta * delta)
    SimPO              -log sigma(beta * (pi_c/n_c - pi_r/n_r) - gamma)   (reference-free)
    RPO                any of the above + alpha * NLL, NLL = -sum_i pi_c,i / sum_i n_c,i (per-token mean over
                       the micro-batch's chosen tokens, as TRL's "sft" loss term and CPO's cpo_alpha)

Metrics keep TRL's names and meanings (TRL 1.16 DPOTrainer; CPOTrainer for SimPO), per pair and detached:
    rewards/chosen = beta * h_c, rewards/rejected = beta * h_r (summed log-ratios, also when the loss is
    length-normalised or IPO, exactly as TRL logs them); rewards/margins = chosen - rejected;
    rewards/accuracies = 1.0 where rewards/chosen > rewards/rejected; logps/chosen, logps/rejected = pi_c, pi_r.
    SimPO (as TRL's CPOTrainer): rewards = beta * pi/n and logps/* = pi/n, the per-token averages.
    nll (when rpo_alpha > 0) = -pi_c / n_c per pair.

Deliberate differences from TRL, each tested:
    - Label smoothing with SimPO uses the same robust (unbiased) form as DPO; TRL's CPOTrainer uses the
      conservative form -(1-eps) log sigma(x) - eps log sigma(-x). At eps = 0 (the default) they agree.
    - `dpo_normalize_logratios_by_length` with IPO changes nothing: IPO is already per-token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preftune.contracts.spec import TrainingSpec
from preftune.errors import TrainingError


@dataclass
class SequenceLogps:
    """Per-pair tensors of shape [B]: log-prob sums of each answer and their token counts (float)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {t.shape for t in (self.chosen, self.rejected, self.chosen_tokens, self.rejected_tokens)}
        if len(shapes) != 1 or self.chosen.dim() != 1:
            raise TrainingError(
                "SequenceLogps needs four 1-D tensors of the same length [B]; got shapes "
                f"chosen={tuple(self.chosen.shape)}, rejected={tuple(self.rejected.shape)}, "
                f"chosen_tokens={tuple(self.chosen_tokens.shape)}, rejected_tokens={tuple(self.rejected_tokens.shape)}"
            )

    def chosen_mean(self) -> torch.Tensor:
        """pi_c / n_c: the chosen answer's per-token average log-prob (n clamped to >= 1, as TRL does)."""
        return self.chosen.float() / self.chosen_tokens.float().clamp(min=1.0)

    def rejected_mean(self) -> torch.Tensor:
        """pi_r / n_r."""
        return self.rejected.float() / self.rejected_tokens.float().clamp(min=1.0)


@dataclass
class LossOutput:
    """`loss`: scalar, averaged over the micro-batch's pairs; `metrics`: per-pair [B] tensors, detached."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


# --- building blocks ----------------------------------------------------------------------------------


def log_ratios(policy: SequenceLogps, reference: SequenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """(h_c, h_r) = (pi_c - ref_c, pi_r - ref_r), in float32."""
    return (
        policy.chosen.float() - reference.chosen.float(),
        policy.rejected.float() - reference.rejected.float(),
    )


def logratio_delta(policy: SequenceLogps, reference: SequenceLogps, *, per_token: bool) -> torch.Tensor:
    """delta = h_c - h_r, or h_c/n_c - h_r/n_r when `per_token` (TRL's sigmoid_norm and ipo scores)."""
    h_c, h_r = log_ratios(policy, reference)
    if per_token:
        h_c = h_c / policy.chosen_tokens.float().clamp(min=1.0)
        h_r = h_r / policy.rejected_tokens.float().clamp(min=1.0)
    return h_c - h_r


def sigmoid_loss(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """-log sigma(x), or with eps > 0 the robust DPO loss of Chowdhury et al. (TRL's "robust"):
    (-(1-eps) log sigma(x) + eps log sigma(-x)) / (1 - 2 eps), an unbiased loss under label flips of rate eps.
    `logits` is x = beta * delta (SimPO: beta * delta - gamma)."""
    if label_smoothing == 0.0:
        return -F.logsigmoid(logits)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


def ipo_loss(per_token_delta: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al., eq. 17, tau = beta): (delta - 1/(2 beta))^2 on per-token log-ratios."""
    return (per_token_delta - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """SLiC hinge: max(0, 1 - beta * delta)."""
    return torch.relu(1.0 - beta * delta)


def chosen_nll(policy: SequenceLogps) -> torch.Tensor:
    """Scalar per-token NLL of the chosen answers over the micro-batch: -sum(pi_c) / sum(n_c).

    Token-weighted, like TRL's "sft" loss term and CPO's cpo_alpha term (a long answer weighs more than a
    short one), not the mean of per-pair averages."""
    return -policy.chosen.float().sum() / policy.chosen_tokens.float().sum().clamp(min=1.0)


def reward_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """TRL's per-pair metrics from the rewards and the log-probs it reports (all detached, float32)."""
    chosen_rewards = chosen_rewards.detach().float()
    rejected_rewards = rejected_rewards.detach().float()
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": chosen_logps.detach().float(),
        "logps/rejected": rejected_logps.detach().float(),
    }


# --- the losses the trainer calls ---------------------------------------------------------------------------


def dpo_loss(policy: SequenceLogps, reference: SequenceLogps, spec: TrainingSpec) -> LossOutput:
    """The reference-based DPO family (sigmoid/robust, IPO, hinge; optionally length-normalised)."""
    beta = spec.dpo_beta
    if spec.dpo_loss_type == "ipo":
        per_pair = ipo_loss(logratio_delta(policy, reference, per_token=True), beta)
    else:
        delta = logratio_delta(policy, reference, per_token=spec.dpo_normalize_logratios_by_length)
        if spec.dpo_loss_type == "hinge":
            per_pair = hinge_loss(delta, beta)
        else:
            per_pair = sigmoid_loss(beta * delta, spec.dpo_label_smoothing)
    h_c, h_r = log_ratios(policy, reference)
    metrics = reward_metrics(beta * h_c, beta * h_r, policy.chosen, policy.rejected)
    return LossOutput(loss=per_pair.mean(), metrics=metrics)


def simpo_loss(policy: SequenceLogps, spec: TrainingSpec) -> LossOutput:
    """SimPO (Meng et al.): -log sigma(beta * (pi_c/n_c - pi_r/n_r) - gamma); no reference model."""
    beta = spec.dpo_beta
    chosen_avg, rejected_avg = policy.chosen_mean(), policy.rejected_mean()
    per_pair = sigmoid_loss(beta * (chosen_avg - rejected_avg) - spec.simpo_gamma, spec.dpo_label_smoothing)
    metrics = reward_metrics(beta * chosen_avg, beta * rejected_avg, chosen_avg, rejected_avg)
    return LossOutput(loss=per_pair.mean(), metrics=metrics)


def preference_loss(policy: SequenceLogps, reference: SequenceLogps | None, spec: TrainingSpec) -> LossOutput:
    """The loss `spec` asks for (DPO variant or SimPO), plus `rpo_alpha` * chosen NLL when RPO is on.

    `reference` must be given exactly when `spec.needs_reference` (every variant but SimPO)."""
    if spec.training_method != "dpo":
        raise TrainingError(f"preference_loss needs training_method=dpo, got {spec.training_method!r}")
    if spec.needs_reference:
        if reference is None:
            raise TrainingError(
                "preference_loss: this DPO variant needs reference log-probs (only SimPO, simpo_gamma > 0, "
                "is reference-free)"
            )
        if reference.chosen.shape != policy.chosen.shape:
            raise TrainingError(
                f"preference_loss: policy has {policy.chosen.shape[0]} pairs but reference has "
                f"{reference.chosen.shape[0]}"
            )
        out = dpo_loss(policy, reference, spec)
    else:
        out = simpo_loss(policy, spec)
    if spec.rpo_alpha > 0:
        out.loss = out.loss + spec.rpo_alpha * chosen_nll(policy)
        out.metrics["nll"] = (-policy.chosen_mean()).detach()
    return out


def sft_loss(logps_sum: torch.Tensor, n_tokens: torch.Tensor) -> LossOutput:
    """SFT: per-token NLL over the micro-batch, -sum(logps_sum) / sum(n_tokens) (token-weighted, like
    transformers' causal-LM loss and TRL's SFTTrainer). Metrics: `nll` per example (-logps_sum / n_tokens)."""
    if logps_sum.dim() != 1 or logps_sum.shape != n_tokens.shape:
        raise TrainingError(
            f"sft_loss needs two 1-D tensors of the same length; got {tuple(logps_sum.shape)} "
            f"and {tuple(n_tokens.shape)}"
        )
    total_tokens = n_tokens.float().sum().clamp(min=1.0)
    loss = -logps_sum.float().sum() / total_tokens
    nll = (-logps_sum.float() / n_tokens.float().clamp(min=1.0)).detach()
    return LossOutput(loss=loss, metrics={"nll": nll})
