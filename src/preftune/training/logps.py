"""Per-sequence log-prob sums from packed rows, without ever building `[batch, length, vocab]` logits.

The decoder runs once over the packed row; only the hidden states that predict an answer token are
gathered, and the output layer plus log-softmax run on those.

A plain (bias-free, unwrapped) output layer is streamed: its vocabulary is walked in tiles of
`VOCAB_TILE` columns with an online log-sum-exp (the running maximum rescales what came before, as
in flash attention), so a tile's weights and logits stay in cache. Whole-vocabulary logits of a chunk
(682 x 49,152 floats, 134 MB for SmolLM2) went to memory and back for each of the softmax's passes,
and the output-layer matmul writing them ran at about 70% of the tiled one's speed.

Under autograd there are two ways to get the gradient without keeping logits:
- frozen output layer (LoRA, where the head is never trained): the gradient of a token's log-prob
  with respect to its hidden state, `W[target] - softmax(logits) @ W`, is accumulated tile by tile
  in the same streamed pass, and kept (`[N, hidden]`, small). The backward pass only scales it by
  the incoming per-token gradient: no second pass over the vocabulary, no recomputation;
- trainable output layer (full fine-tuning): each chunk is checkpointed, its logits recomputed in
  the backward pass.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from preftune.kernels.attention import use_block_attention
from preftune.kernels.autocast import autocast_dtype
from preftune.training.packing import PackedBatch

# Float32 logits kept alive at once by the chunked log-softmax of a head that cannot be streamed.
LOGITS_BUDGET_BYTES = 128 * 1024 * 1024
# The streamed head: vocabulary columns per tile and hidden states per chunk. A tile's weights
# (2,048 x 576 floats for SmolLM2, 4.7 MB) and a chunk's logits for it (8 MB) fit in cache; larger
# or smaller values measured no faster on a 2-core CPU.
VOCAB_TILE = 2048
STREAM_CHUNK_TOKENS = 1024


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
    # No autograd: an in-place log-sum-exp, fewer passes over the logits.
    top = logits.amax(dim=-1, keepdim=True)
    return picked - (top + logits.sub_(top).exp_().sum(dim=-1, keepdim=True).log()).squeeze(-1)


def streamed_head_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    with_grad: bool,
    vocab_tile: int = VOCAB_TILE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target | hidden) through the linear head `weight` [V, d], streamed over the vocabulary.

    Returns float32 log-probs [N] and, with `with_grad`, their gradient with respect to `hidden`,
    `weight[target] - softmax(hidden @ weight.T) @ weight` (float32 [N, d]). Not differentiable
    itself: callers run it without autograd. The target's logit is read out of the tile holding it,
    so it is the same number the log-sum-exp saw.
    """
    n = hidden.shape[0]
    device = hidden.device
    dtype = autocast_dtype(device.type) if device.type == "cpu" else None
    if dtype is not None:
        # Cast once here, not per tile (autocast would recast the tile's weights every time), and so
        # that the gradient's matmul below runs in the autocast dtype too (an in-place addmm_ is
        # outside autocast's reach and would run in float32, at half the speed where bf16 is native).
        # CPU only: on a GPU the kept copy of a large model's head would cost memory it may not have.
        hidden, tiles = hidden.to(dtype), _cast_head(weight, dtype)
    else:
        tiles = weight
    top = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
    total = torch.zeros(n, dtype=torch.float32, device=device)
    picked = torch.zeros(n, dtype=torch.float32, device=device)
    expected = torch.zeros(n, hidden.shape[1], dtype=torch.float32, device=device) if with_grad else None
    for start in range(0, tiles.shape[0], vocab_tile):
        tile = tiles[start : start + vocab_tile]
        logits = (hidden @ tile.t()).float()  # [N, tile]; autocast decides the matmul's precision
        inside = (targets >= start) & (targets < start + tile.shape[0])
        column = (targets - start).clamp_(0, tile.shape[0] - 1).unsqueeze(1)
        picked = torch.where(inside, logits.gather(1, column).squeeze(1), picked)
        new_top = torch.maximum(top, logits.amax(dim=1))
        rescale = (top - new_top).exp_()  # exp(-inf) = 0 on the first tile
        probs = logits.sub_(new_top.unsqueeze(1)).exp_()  # unnormalised, relative to new_top
        total.mul_(rescale).add_(probs.sum(dim=1))
        if expected is not None:
            expected.mul_(rescale.unsqueeze(1))
            if tile.dtype == torch.float32:
                expected.addmm_(probs, tile)
            else:  # a half-precision head: the matmul in its dtype, accumulated in float32
                expected.add_((probs.to(tile.dtype) @ tile).float())
        top = new_top
    logps = picked - (top + total.log())
    if expected is None:
        return logps, None
    grad = weight[targets].float().sub_(expected.div_(total.unsqueeze(1)))
    return logps, grad


# The frozen head's weight in the autocast dtype, kept for as long as the weight is unchanged: every
# chunk of every pass would otherwise cast all of it again. One head at a time, held by a weak
# reference to the weight it was cast from (identity and version, not address, decide a hit).
_HEAD_CAST: list[tuple[weakref.ref[torch.Tensor], int, torch.Tensor]] = []


def _cast_head(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if weight.dtype == dtype:
        return weight
    for source, version, cast in _HEAD_CAST:
        if source() is weight and version == weight._version and cast.dtype == dtype:
            return cast
    cast = weight.detach().to(dtype)
    _HEAD_CAST[:] = [(weakref.ref(weight), weight._version, cast)]
    return cast


class _FrozenHeadLogps(torch.autograd.Function):
    """log p(target | hidden) through a frozen linear head, with d/d(hidden) computed in the forward."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            stop = start + chunk
            out[start:stop], grad[start:stop] = streamed_head_logps(  # type: ignore[assignment]
                hidden[start:stop], weight, targets[start:stop], with_grad=True
            )
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
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    head_trains = any(p.requires_grad for p in head.parameters())
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or head_trains)
    # Streamed unless autograd must go through the head's own weight (full fine-tuning's training pass).
    if _plain_linear(head) and not (needs_grad and head_trains):
        chunk = chunk_tokens or STREAM_CHUNK_TOKENS
        if needs_grad:
            return _FrozenHeadLogps.apply(hidden, head.weight, targets, chunk)  # type: ignore[no-any-return]
        return torch.cat(
            [
                streamed_head_logps(
                    hidden[start : start + chunk],
                    head.weight,
                    targets[start : start + chunk],
                    with_grad=False,
                )[0]
                for start in range(0, hidden.shape[0], chunk)
            ]
        )
    if chunk_tokens is None:
        vocab = getattr(head, "out_features", None) or head.weight.shape[0]
        chunk_tokens = max(64, LOGITS_BUDGET_BYTES // (4 * int(vocab)))
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
