"""Block attention under CPU bf16 autocast, as batched bf16 matmuls with a hand-written backward.

On a CPU with native bf16 (AVX512-BF16, AMX), oneDNN runs attention's small batched matmuls in bf16
about ten times faster than in float32 (SmolLM2's `[3, 384, 64] x [3, 64, 500]`: 539 against 52
GFLOP/s on a 2-core Zen 5 EPYC), while PyTorch's CPU flash kernel reaches about 90 GFLOP/s in either
dtype. So under bf16 autocast each query chunk of a block (see `kernels.attention`) is computed as

    S = (q * scale) K^T      P = softmax(S) (float32 inside)      O = P V

with the chunk's causal triangle masked, and the backward pass from the saved `P` as

    dV = P^T dO      dP = dO V^T      dS = P * (dP - rowsum(dP * P))      dQ = dS K      dK = dS^T q

all matmuls in bf16 with float32 accumulation. This rounds the scores to bf16 before the softmax
(the flash kernel keeps them in float32): the attention output differs from float32 attention by about
what the bf16 flash kernel's does, and the gradients by less (`tests/training/test_bf16_attention.py`).
Keeping `P` costs `heads x visible keys` bf16 numbers per query token and layer, 9 MB a layer for a
2,000-token pass of SmolLM2; the flash kernel would recompute it.

The grouped-query layout is laid out so every matmul reads a view: queries as `[kv_heads, tokens,
group, dim]`, so a chunk's queries for one key/value head are one contiguous `[chunk x group, dim]`
matrix against that head's keys, with no copy of the keys per query head.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from preftune.kernels.blocks import QUERY_CHUNK, Block

# Per (group, dtype, chunk): the additive causal mask of a full chunk, its rows repeated `group` times
# (one per query head of a key/value head); a shorter chunk's mask is its top-left corner.
_TRIANGLES: dict[tuple[int, torch.dtype, int], torch.Tensor] = {}


def _triangle(group: int, rows: int, dtype: torch.dtype) -> torch.Tensor:
    key = (group, dtype, QUERY_CHUNK)
    mask = _TRIANGLES.get(key)
    if mask is None:
        hidden = torch.ones(QUERY_CHUNK, QUERY_CHUNK, dtype=torch.bool).triu_(1)
        square = torch.zeros(QUERY_CHUNK, QUERY_CHUNK, dtype=dtype).masked_fill_(hidden, float("-inf"))
        mask = _TRIANGLES[key] = square.repeat_interleave(group, dim=0)
    return mask[: rows * group, :rows]


def _block_keys(
    t: torch.Tensor, blocks: Sequence[Block]
) -> Iterator[tuple[int, int, int, int, torch.Tensor]]:
    """Per block: (start, length, prefix, start of the block before, its keys or values [Hkv, prefix + length, D])."""
    start = previous = 0
    for length, prefix in blocks:
        own = t[:, start : start + length]
        keys = torch.cat([t[:, previous : previous + prefix], own], dim=1) if prefix else own
        yield start, length, prefix, previous, keys
        previous, start = start, start + length


def _chunks(length: int) -> Iterator[tuple[int, int]]:
    for start in range(0, length, QUERY_CHUNK):
        yield start, min(length, start + QUERY_CHUNK)


def _queries(query: torch.Tensor, key_heads: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """[1, H, T, D] -> (query * scale) as [Hkv, T, G, D] in `dtype` (scaled before rounding)."""
    _, heads, tokens, dim = query.shape
    grouped = query[0].view(key_heads, heads // key_heads, tokens, dim).transpose(1, 2)
    return (grouped * scale).to(dtype, memory_format=torch.contiguous_format)


def _forward(
    queries: torch.Tensor, key: torch.Tensor, value: torch.Tensor, blocks: Sequence[Block], keep: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Attention output [Hkv, T, G, D] and, with `keep`, each chunk's probabilities [Hkv, c*G, keys]."""
    key_heads, _, group, dim = queries.shape
    outputs, probabilities = [], []
    for (start, length, prefix, _, keys), (*_, values) in zip(
        _block_keys(key, blocks), _block_keys(value, blocks), strict=True
    ):
        for first, stop in _chunks(length):
            rows, visible = stop - first, prefix + stop
            q = queries[:, start + first : start + stop].reshape(key_heads, rows * group, dim)
            scores = torch.bmm(q, keys[:, :visible].transpose(1, 2))
            scores[:, :, visible - rows :].add_(_triangle(group, rows, scores.dtype))
            probs = torch.softmax(scores, dim=-1)
            outputs.append(torch.bmm(probs, values[:, :visible]).view(key_heads, rows, group, dim))
            if keep:
                probabilities.append(probs)
    return torch.cat(outputs, dim=1), probabilities


def _to_model_layout(grouped: torch.Tensor) -> torch.Tensor:
    """[Hkv, T, G, D] -> [1, T, H, D], the layout the output projection reads."""
    key_heads, tokens, group, dim = grouped.shape
    return grouped.permute(1, 0, 2, 3).reshape(1, tokens, key_heads * group, dim)


class _BlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        blocks: Sequence[Block],
        scale: float,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        queries = _queries(query, key.shape[1], scale, dtype)
        k, v = key[0].to(dtype), value[0].to(dtype)
        out, probabilities = _forward(queries, k, v, blocks, keep=True)
        ctx.save_for_backward(queries, k, v)
        ctx.probabilities, ctx.blocks, ctx.scale = probabilities, blocks, scale
        ctx.dtypes = (query.dtype, key.dtype, value.dtype)
        return _to_model_layout(out)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        queries, k, v = ctx.saved_tensors
        key_heads, tokens, group, dim = queries.shape
        # dO in the queries' layout, [Hkv, T, G, D]
        grad_grouped = grad_out[0].view(tokens, key_heads, group, dim).transpose(0, 1).to(queries.dtype)
        grad_grouped = grad_grouped.contiguous()
        grad_q = torch.empty_like(queries)
        # Keys and values are shared by many chunks (and a prompt's by two blocks): summed in float32.
        grad_k = torch.zeros(k.shape, dtype=torch.float32)
        grad_v = torch.zeros(v.shape, dtype=torch.float32)
        probabilities = iter(ctx.probabilities)
        for (start, length, prefix, previous, keys), (*_, values) in zip(
            _block_keys(k, ctx.blocks), _block_keys(v, ctx.blocks), strict=True
        ):
            block_k = torch.zeros(key_heads, prefix + length, dim, dtype=torch.float32)
            block_v = torch.zeros_like(block_k)
            for first, stop in _chunks(length):
                rows, visible = stop - first, prefix + stop
                probs = next(probabilities)
                q = queries[:, start + first : start + stop].reshape(key_heads, rows * group, dim)
                grad_o = grad_grouped[:, start + first : start + stop].reshape(key_heads, rows * group, dim)
                block_v[:, :visible] += torch.bmm(probs.transpose(1, 2), grad_o)
                grad_probs = torch.bmm(grad_o, values[:, :visible].transpose(1, 2))
                grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
                grad_q[:, start + first : start + stop] = torch.bmm(grad_scores, keys[:, :visible]).view(
                    key_heads, rows, group, dim
                )
                block_k[:, :visible] += torch.bmm(grad_scores.transpose(1, 2), q)
            own = slice(start, start + length)
            grad_k[:, own] += block_k[:, prefix:]
            grad_v[:, own] += block_v[:, prefix:]
            if prefix:  # the prompt's keys, at the start of the block before
                grad_k[:, previous : previous + prefix] += block_k[:, :prefix]
                grad_v[:, previous : previous + prefix] += block_v[:, :prefix]
        # queries were scaled before the products: dQ (w.r.t. the unscaled query) carries the scale,
        # and dK = dS^T (q * scale) has it already.
        query_dtype, key_dtype, value_dtype = ctx.dtypes
        # [Hkv, T, G, D] -> [1, H, T, D], in the [T, H, D] memory layout the query came in
        grad_query = _to_model_layout(grad_q.to(query_dtype).mul_(ctx.scale)).transpose(1, 2)
        return grad_query, grad_k.to(key_dtype)[None], grad_v.to(value_dtype)[None], None, None, None


def bf16_block_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocks: Sequence[Block],
    scale: float | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Causal block attention of query [1, H, T, D] over key/value [1, Hkv, T, D] -> [1, T, H, D] in `dtype`.

    No sliding window, no dropout: `kernels.attention` sends only those cases here.
    """
    if query.shape[0] != 1:
        raise ValueError(f"bf16_block_attention takes one packed row, not a batch of {query.shape[0]}")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    # Every dtype here is chosen explicitly: autocast would run the softmax in float32 and cast its
    # output back down for the next matmul.
    with torch.autocast("cpu", enabled=False):
        if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
            out: torch.Tensor = _BlockAttention.apply(query, key, value, blocks, scale, dtype)
            return out
        queries = _queries(query, key.shape[1], scale, dtype)
        grouped, _ = _forward(queries, key[0].to(dtype), value[0].to(dtype), blocks, keep=False)
        return _to_model_layout(grouped)
