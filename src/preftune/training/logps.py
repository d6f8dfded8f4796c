"""Per-sequence log-prob sums from packed rows, without ever building `[batch, length, vocab]` logits.

The decoder runs once over the packed row; only the hidden states that predict an answer token are
gathered, and the output layer plus log-softmax run on those in chunks of `LOGITS_BUDGET_BYTES`.

Under autograd there are two ways to get the gradient without keeping every chunk's logits:
- frozen output layer (LoRA, where the head is never trained): the gradient of a token's log-prob
  with respect to its hidden state, `W[target] - softmax(logits) @ W`, is computed in the forward
  pass while the chunk's logits exist, and kept (`[N, hidden]`, small). The backward pass only
  scales it by the incoming per-token gradient: no second output-layer matmul, no recomputation;
- trainable output layer (full fine-tuning): each chunk is checkpointed, its logits recomputed in
  the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from preftune.training.attention import use_block_attention
from preftune.training.packing import PackedBatch

# Float32 logits kept alive at once by the chunked log-softmax.
LOGITS_BUDGET_BYTES = 128 * 1024 * 1024


def split_model(model: Any) -> tuple[nn.Module, nn.Module]:
    """The decoder stack (embeddings to final norm) and the output layer of a causal LM (PEFT or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    head = base.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(f"{type(base).__name__} does not expose get_decoder()/get_output_embeddings()")
    return decoder, head


def _chunk_logps(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if torch.is_grad_enabled():
        return picked - torch.logsumexp(logits, dim=-1)
    # No autograd (reference, evaluation): an in-place log-sum-exp, fewer passes over the logits.
    top = logits.amax(dim=-1, keepdim=True)
    return picked - (top + logits.sub_(top).exp_().sum(dim=-1, keepdim=True).log()).squeeze(-1)


class _FrozenHeadLogps(torch.autograd.Function):
    """log p(target | hidden) through a frozen linear head, with d/d(hidden) computed in the forward."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            logits = F.linear(h, weight).float()
            picked = logits.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            # softmax in place, three passes over the chunk (torch.logsumexp alone takes more).
            top = logits.amax(dim=-1, keepdim=True)
            unnormalised = logits.sub_(top).exp_()
            total = unnormalised.sum(dim=-1, keepdim=True)
            out[start : start + chunk] = picked - (top + total.log()).squeeze(-1)
            expected = (unnormalised.to(weight.dtype) @ weight).float() / total
            grad[start : start + chunk] = weight[t].float() - expected
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_out.unsqueeze(-1)).to(ctx.hidden_dtype), None, None, None


def token_logps(
    hidden: torch.Tensor, head: Any, targets: torch.Tensor, chunk_tokens: int | None = None
) -> torch.Tensor:
    """log p(target | hidden) for each row of `hidden` [N, d], as float32 [N]."""
    if chunk_tokens is None:
        vocab = getattr(head, "out_features", None) or head.weight.shape[0]
        chunk_tokens = max(64, LOGITS_BUDGET_BYTES // (4 * int(vocab)))
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    head_trains = any(p.requires_grad for p in head.parameters())
    if torch.is_grad_enabled() and hidden.requires_grad and not head_trains and _plain_linear(head):
        return _FrozenHeadLogps.apply(hidden, head.weight, targets, chunk_tokens)  # type: ignore[no-any-return]
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or head_trains)
    out = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if needs_grad:
            out.append(checkpoint(_chunk_logps, head, h, t, use_reentrant=False))
        else:
            out.append(_chunk_logps(head, h, t))
    return torch.cat(out)


def _plain_linear(head: Any) -> bool:
    """A bias-free nn.Linear (PEFT-wrapped heads and biased heads take the generic path)."""
    return type(head) is nn.Linear and head.bias is None


def sequence_logps(
    model: nn.Module, batch: PackedBatch, chunk_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of target log-probs and target count for each slot: two float32 tensors of shape [n_slots]."""
    use_block_attention(model)
    decoder, head = split_model(model)
    hidden = decoder(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        use_cache=False,
        blocks=batch.blocks,
    ).last_hidden_state
    picked = hidden[0, batch.gather]
    logps = token_logps(picked, head, batch.targets, chunk_tokens)
    sums = torch.zeros(batch.n_slots, dtype=torch.float32, device=logps.device).index_add(
        0, batch.slots, logps
    )
    counts = torch.zeros(batch.n_slots, dtype=torch.float32, device=logps.device).index_add(
        0, batch.slots, torch.ones_like(logps)
    )
    return sums, counts
