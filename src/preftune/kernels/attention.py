"""Attention over packed blocks: each block attends causally to itself and to a prefix of the block before it.

This is how a prefix-shared preference pair is computed in one pass without a `[T, T]` mask: the row
`[prompt][chosen][rejected]` is two blocks, `prompt+chosen` (plain causal) and `rejected`, whose keys
are the prompt (the first `len(prompt)` tokens of the block before) followed by itself. Examples are
laid end to end in one row, so no token is padding and no attention is computed between examples:
the cost is the sum of the blocks' own causal attention, not the square of the row.

On the CPU, a block longer than `QUERY_CHUNK` tokens runs as chunks of queries, each against only the
keys it can see (`_chunked_attention`): PyTorch's CPU kernel would compute a short block's full square.

Registered with transformers as the attention implementation `preftune_blocks`; the layout reaches it
as the `blocks` keyword of the decoder's forward, which transformers passes down to every attention
call. Without `blocks` it is plain causal attention over an unpadded batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from preftune.kernels.autocast import autocast_dtype, cpu_has_fast_bf16
from preftune.kernels.bf16_attention import bf16_block_attention
from preftune.kernels.blocks import QUERY_CHUNK, Block

IMPLEMENTATION = "preftune_blocks"


# Per (device, dtype): a [QUERY_CHUNK, width] additive mask, zeros then a lower-triangular block in
# its last QUERY_CHUNK columns. Every chunk's mask is a view of it (see `_chunk_mask`).
_STAIRS: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}


def _chunk_mask(visible: int, rows: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [rows, visible + rows]: every query sees the first `visible` keys, then the
    following `rows` keys causally. A view of one cached tensor: no mask is built per call."""
    key = (device, dtype, QUERY_CHUNK)
    stairs = _STAIRS.get(key)
    if stairs is None or stairs.shape[1] < visible + QUERY_CHUNK:
        width = max(visible + QUERY_CHUNK, 2 * stairs.shape[1] if stairs is not None else 4096)
        hidden = torch.ones(QUERY_CHUNK, QUERY_CHUNK, dtype=torch.bool, device=device).triu_(1)
        stairs = torch.zeros(QUERY_CHUNK, width, dtype=dtype, device=device)
        stairs[:, width - QUERY_CHUNK :].masked_fill_(hidden, float("-inf"))
        _STAIRS[key] = stairs
    end = stairs.shape[1] - QUERY_CHUNK
    return stairs[:rows, end - visible : end + rows]


@functools.lru_cache(maxsize=32)
def _block_mask(
    length: int, prefix: int, window: int | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask [length, prefix + length]: query a sees key b (prefix first) when b <= a + prefix.

    Used whole on CUDA and, sliced per query chunk, for sliding-window blocks on the CPU. Cached:
    every layer of a forward asks for the same blocks' masks. 32 entries hold a pass's worth (one
    per pair) and at most about 128 MB at max_length 1024.
    """
    q = torch.arange(length, device=device).unsqueeze(1) + prefix
    k = torch.arange(prefix + length, device=device).unsqueeze(0)
    visible = k <= q
    if window is not None:
        visible &= q - k < window
    return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))


def _chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: int, window: int | None, **sdpa: Any
) -> list[torch.Tensor]:
    """One block's attention as query chunks, each against only the keys it can see.

    PyTorch's CPU flash kernel skips masked keys only in whole tiles of 512, so a causal or masked
    block under 512 tokens costs its full rectangle of scores; chunks of QUERY_CHUNK queries bring
    that down to about the visible part (forward and backward 15-30% faster on SmolLM2's shapes,
    `benchmarks/RESULTS.md`). Splitting queries is exact: each query's softmax is over its own keys.
    """
    length = q.shape[2]
    outputs = []
    for start, chunk in zip(range(0, length, QUERY_CHUNK), q.split(QUERY_CHUNK, dim=2), strict=True):
        stop = start + chunk.shape[2]
        if window is None:
            first, mask = 0, _chunk_mask(prefix + start, chunk.shape[2], q.device, q.dtype)
        else:  # keys that slid out of every query's window are left out too
            first = max(0, prefix + start - window + 1)
            mask = _block_mask(length, prefix, window, q.device, q.dtype)[start:stop, first : prefix + stop]
        keys, values = k[:, :, first : prefix + stop], v[:, :, first : prefix + stop]
        outputs.append(F.scaled_dot_product_attention(chunk, keys, values, attn_mask=mask, **sdpa))
    return outputs


def block_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    blocks: Sequence[Block] | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: query [B, H, T, D], key/value [B, Hkv, T, D] -> [B, T, H, D].

    `attention_mask` is always None here (no mask function is registered for this implementation).
    """
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("preftune's packed attention does not support attention logit soft-capping")
    if blocks is None:  # unpadded rows, each one causal sequence
        blocks = [(query.shape[2], 0)]
    out_dtype = autocast_dtype(query.device.type) if query.device.type == "cpu" else None
    if out_dtype is not None:
        windowed = sliding_window is not None and any(p + n > sliding_window for n, p in blocks)
        p = dropout if module.training else 0.0
        if (
            out_dtype == torch.bfloat16
            and cpu_has_fast_bf16()
            and query.shape[0] == 1
            and not windowed
            and not p
        ):
            return bf16_block_attention(query, key, value, blocks, scaling), None
        # Otherwise float32: PyTorch's CPU flash kernel runs slower in bf16 than in float32 (one
        # training step's attention 8.0 against 5.6 s on an AVX512-BF16 EPYC, `benchmarks/RESULTS.md`),
        # and only the output goes back to the autocast dtype. (Autocast itself would cast SDPA's
        # inputs back down, so it is switched off around the kernels.)
        with torch.autocast("cpu", enabled=False):
            query, key, value = query.float(), key.float(), value.float()
            out, _ = block_attention(
                module, query, key, value, attention_mask, dropout, scaling, blocks, sliding_window, **kwargs
            )
        return out.to(out_dtype), None
    # Grouped-query attention: SDPA maps each key/value head to its query heads itself, without the
    # copies `repeat_kv` would make (and autograd would keep).
    gqa = query.shape[1] != key.shape[1]
    sizes = [length for length, _ in blocks]
    # One split per tensor: its backward is a single concatenation, where slicing the full row per
    # block would make autograd build a full-size zero gradient for every block.
    qs, ks, vs = query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2)
    p = dropout if module.training else 0.0
    # Query chunks pay on the CPU only: CUDA's kernels skip masked tiles themselves.
    chunked = query.device.type == "cpu"
    outputs: list[torch.Tensor] = []
    for i, (length, prefix) in enumerate(blocks):
        q, k, v = qs[i], ks[i], vs[i]
        if prefix:
            k = torch.cat([ks[i - 1][:, :, :prefix], k], dim=2)
            v = torch.cat([vs[i - 1][:, :, :prefix], v], dim=2)
        windowed = sliding_window is not None and prefix + length > sliding_window
        if not prefix and not windowed and (length <= QUERY_CHUNK or not chunked):
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=length > 1, dropout_p=p, scale=scaling, enable_gqa=gqa
            )
            outputs.append(out)
        elif not chunked:
            mask = _block_mask(length, prefix, sliding_window, q.device, q.dtype)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, scale=scaling, enable_gqa=gqa
            )
            outputs.append(out)
        else:
            window = sliding_window if windowed else None
            outputs += _chunked_attention(q, k, v, prefix, window, dropout_p=p, scale=scaling, enable_gqa=gqa)
    # Joined along the sequence as [B, T, H, D], the layout the output projection reads: the kernel
    # writes each output in its query's layout, which transformers' projections make [B, T, H, D]
    # already, so this is the one copy (joining in [B, H, T, D] and transposing would be two).
    if len(outputs) == 1:
        return outputs[0].transpose(1, 2).contiguous(), None
    return torch.cat([out.transpose(1, 2) for out in outputs], dim=1), None


AttentionInterface.register(IMPLEMENTATION, block_attention)


def use_block_attention(model: Any) -> None:
    """Switch `model` (PEFT-wrapped or not) to block attention; a no-op when it already uses it.

    The implementation has no mask function registered, so transformers builds no attention mask for
    it: every forward must pass unpadded rows (and `blocks` for packed ones).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != IMPLEMENTATION:
        base.set_attn_implementation(IMPLEMENTATION)
