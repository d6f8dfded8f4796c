"""Per-sequence log-prob sums from packed rows, without ever building `[batch, length, vocab]` logits.

The decoder runs once over the packed rows; only the hidden states that predict an answer token
are gathered, and the output layer plus log-softmax run on those in chunks. Under autograd each
chunk is checkpointed: its float32 logits are recomputed in the backward pass instead of being
kept, so peak memory holds one chunk of logits, not all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

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
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logps(
    hidden: torch.Tensor, head: Any, targets: torch.Tensor, chunk_tokens: int | None = None
) -> torch.Tensor:
    """log p(target | hidden) for each row of `hidden` [N, d], as float32 [N]."""
    if chunk_tokens is None:
        vocab = getattr(head, "out_features", None) or head.weight.shape[0]
        chunk_tokens = max(64, LOGITS_BUDGET_BYTES // (4 * int(vocab)))
    fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = _chunk_logps
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    out = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if needs_grad:
            out.append(checkpoint(fn, head, h, t, use_reentrant=False))
        else:
            out.append(fn(head, h, t))
    if not out:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(out)


def sequence_logps(
    model: nn.Module, batch: PackedBatch, chunk_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of target log-probs and target count for each slot: two float32 tensors of shape [n_slots]."""
    decoder, head = split_model(model)
    hidden = decoder(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state
    picked = hidden[batch.gather_rows, batch.gather_pos]
    logps = token_logps(picked, head, batch.targets, chunk_tokens)
    sums = torch.zeros(batch.n_slots, dtype=torch.float32, device=logps.device).index_add(
        0, batch.slots, logps
    )
    counts = torch.zeros(batch.n_slots, dtype=torch.float32, device=logps.device).index_add(
        0, batch.slots, torch.ones_like(logps)
    )
    return sums, counts
