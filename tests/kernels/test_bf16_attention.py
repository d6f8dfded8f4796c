"""Block attention as bf16 matmuls (CPU bf16 autocast on CPUs with native bf16) against float32 attention."""

from __future__ import annotations

import pytest
import torch

from preftune.kernels import attention, bf16_attention
from preftune.kernels.attention import block_attention
from preftune.kernels.bf16_attention import bf16_block_attention
from preftune.kernels.blocks import Block

# A causal block longer than a chunk, a block after a prompt (its last chunk short), a short causal block.
BLOCKS: list[Block] = [(11, 0), (7, 5), (3, 0)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16_attention, "QUERY_CHUNK", 4)


def inputs(heads: int = 4, key_heads: int = 2, dim: int = 8) -> list[torch.Tensor]:
    torch.manual_seed(0)
    total = sum(length for length, _ in BLOCKS)
    # The model's layout: [1, T, H, D] memory seen as [1, H, T, D].
    shapes = [(1, total, heads, dim), (1, total, key_heads, dim), (1, total, key_heads, dim)]
    return [torch.randn(shape).bfloat16().transpose(1, 2).requires_grad_(True) for shape in shapes]


def test_matches_float32_attention_in_output_and_gradients() -> None:
    query, key, value = inputs()
    out = bf16_block_attention(query, key, value, BLOCKS)
    fp32 = [t.detach().float().requires_grad_(True) for t in (query, key, value)]
    expected, _ = block_attention(torch.nn.Module(), *fp32, None, blocks=BLOCKS)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    # Scores rounded to bf16 before the softmax: about as far from float32 as bf16 SDPA is.
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=2e-2)
    upstream = torch.randn(expected.shape)
    (out.float() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for ours, theirs in zip((query, key, value), fp32, strict=True):
        assert ours.grad is not None and theirs.grad is not None and ours.grad.dtype == torch.bfloat16
        error = (ours.grad.float() - theirs.grad).norm() / theirs.grad.norm()
        assert error < 2e-2


def test_without_autograd_gives_the_same_numbers() -> None:
    # The DPO reference pass runs under no_grad, the policy pass with autograd: at the first step
    # (LoRA's B is zero) both must be the same computation, or the loss would not start at log 2.
    query, key, value = inputs()
    with torch.no_grad():
        plain = bf16_block_attention(query, key, value, BLOCKS)
    tracked = bf16_block_attention(query, key, value, BLOCKS)
    assert tracked.requires_grad
    torch.testing.assert_close(tracked, plain, atol=0.0, rtol=0.0)


def test_float32_inputs_get_float32_gradients() -> None:
    # Under autocast the rotary embedding can leave queries in float32 while values are bf16.
    query, key, value = inputs()
    query = query.detach().float().requires_grad_(True)
    out = bf16_block_attention(query, key, value, BLOCKS)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert query.grad is not None and query.grad.dtype == torch.float32 and query.grad.shape == query.shape


def test_block_attention_sends_cpu_bf16_autocast_here_when_bf16_is_native(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    query, key, value = inputs()
    module = torch.nn.Module()
    monkeypatch.setattr(attention, "cpu_has_fast_bf16", lambda: True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routed, _ = block_attention(module, query, key, value, None, blocks=BLOCKS)
        # A sliding window that cuts into a block is not handled here: float32 flash path.
        windowed, _ = block_attention(module, query, key, value, None, blocks=BLOCKS, sliding_window=6)
    torch.testing.assert_close(routed, bf16_block_attention(query, key, value, BLOCKS), atol=0.0, rtol=0.0)
    fp32 = [t.detach().float() for t in (query, key, value)]
    expected, _ = block_attention(module, *fp32, None, blocks=BLOCKS, sliding_window=6)
    torch.testing.assert_close(windowed, expected.bfloat16(), atol=0.0, rtol=0.0)
    monkeypatch.setattr(attention, "cpu_has_fast_bf16", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emulated, _ = block_attention(module, query, key, value, None, blocks=BLOCKS)
    expected, _ = block_attention(module, *fp32, None, blocks=BLOCKS)
    torch.testing.assert_close(emulated, expected.bfloat16(), atol=0.0, rtol=0.0)
