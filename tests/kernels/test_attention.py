"""Block attention against dense attention with an explicit `[T, T]` mask, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from preftune.kernels import attention
from preftune.kernels.attention import block_attention
from preftune.kernels.blocks import Block


def dense_mask(blocks: list[Block], window: int | None) -> torch.Tensor:
    """The boolean `[T, T]` visibility the blocks describe, built position by position."""
    starts, position = [], 0
    for length, _ in blocks:
        starts.append(position)
        position += length
    visible = torch.zeros(position, position, dtype=torch.bool)
    for i, (length, prefix) in enumerate(blocks):
        start = starts[i]
        for a in range(length):
            # keys in logical order: the block before's first `prefix` tokens, then this block's
            keys = [starts[i - 1] + b for b in range(prefix)] + [start + b for b in range(a + 1)]
            for n, key in enumerate(keys):
                distance = prefix + a - n
                if window is None or distance < window:
                    visible[start + a, key] = True
    return visible


@pytest.mark.parametrize("window", [None, 9])
@pytest.mark.parametrize("chunk", [4, 7, 128])
def test_block_attention_equals_dense_masked_attention(
    monkeypatch: pytest.MonkeyPatch, chunk: int, window: int | None
) -> None:
    # Small query chunks, so that every block is cut in several, with a partial last chunk.
    monkeypatch.setattr(attention, "QUERY_CHUNK", chunk)
    torch.manual_seed(0)
    blocks: list[Block] = [(13, 0), (11, 5), (3, 0), (20, 0), (6, 20), (2, 0), (1, 2)]
    total = sum(length for length, _ in blocks)
    query = torch.randn(1, 6, total, 8, requires_grad=True)
    key = torch.randn(1, 2, total, 8, requires_grad=True)  # grouped-query: 3 query heads per key head
    value = torch.randn(1, 2, total, 8, requires_grad=True)
    module = torch.nn.Module()

    out, _ = block_attention(module, query, key, value, None, blocks=blocks, sliding_window=window)
    bias = torch.zeros(total, total).masked_fill_(~dense_mask(blocks, window), float("-inf"))
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, enable_gqa=True)
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)

    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (query, key, value), grad)
    want = torch.autograd.grad(expected.transpose(1, 2), (query, key, value), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_chunk_masks_are_views_of_one_cached_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "QUERY_CHUNK", 4)
    monkeypatch.setattr(attention, "_STAIRS", {})
    mask = attention._chunk_mask(3, 4, torch.device("cpu"), torch.float32)
    expected = torch.tensor([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 1], [0] * 7])
    assert torch.equal(mask == float("-inf"), expected.bool())
    partial = attention._chunk_mask(5, 2, torch.device("cpu"), torch.float32)
    assert partial.shape == (2, 7) and torch.equal(partial[:, :5], torch.zeros(2, 5))
    assert partial.untyped_storage().data_ptr() == mask.untyped_storage().data_ptr()
