"""Under CPU bf16 autocast, the trainer's own paths compute what autocast would, with fewer casts.

Attention runs in float32 where bf16 is not native (PyTorch's CPU flash kernel is slower in bf16;
with native bf16 it runs as bf16 matmuls, `test_bf16_attention.py`), a norm's output is cast
once for all its consumers, and the streamed output layer casts its weight once, not per tile.
"""

from __future__ import annotations

import pytest
import torch

from preftune.kernels import attention
from preftune.kernels.attention import block_attention
from preftune.kernels.blocks import Block
from preftune.kernels.elementwise import rms_norm
from preftune.training import logps


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_attention_under_autocast_runs_in_float32_and_returns_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "cpu_has_fast_bf16", lambda: False)
    torch.manual_seed(0)
    blocks: list[Block] = [(9, 0), (5, 4)]
    total = sum(length for length, _ in blocks)
    query = torch.randn(1, 4, total, 8).bfloat16().requires_grad_(True)
    key = torch.randn(1, 2, total, 8).bfloat16().requires_grad_(True)
    value = torch.randn(1, 2, total, 8).bfloat16().requires_grad_(True)
    module = torch.nn.Module()
    with bf16_autocast():
        out, _ = block_attention(module, query, key, value, None, blocks=blocks)
    # The same blocks computed outside autocast on the float32 values of the same inputs.
    fp32 = [t.detach().float().requires_grad_(True) for t in (query, key, value)]
    expected, _ = block_attention(module, *fp32, None, blocks=blocks)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected.bfloat16(), atol=0.0, rtol=0.0)
    out.float().sum().backward()
    expected.sum().backward()
    assert query.grad is not None and query.grad.dtype == torch.bfloat16
    torch.testing.assert_close(query.grad.float(), fp32[0].grad, atol=2e-2, rtol=2e-2)


def test_rms_norm_under_autocast_returns_what_its_consumers_would_cast_it_to() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 16, requires_grad=True)
    weight = torch.randn(16)
    plain = rms_norm(x, weight, 1e-6)
    with bf16_autocast():
        cast = rms_norm(x, weight, 1e-6)
    assert plain.dtype == torch.float32 and cast.dtype == torch.bfloat16
    torch.testing.assert_close(cast, plain.bfloat16(), atol=0.0, rtol=0.0)
    cast.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


def test_streamed_head_under_autocast_matches_float32_and_casts_its_weight_once() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(6, 32)
    weight = torch.randn(300, 32) * 0.3
    targets = torch.randint(0, 300, (6,))
    want, want_grad = logps.streamed_head_logps(hidden, weight, targets, with_grad=True, vocab_tile=64)
    with bf16_autocast():
        got, got_grad = logps.streamed_head_logps(hidden, weight, targets, with_grad=True, vocab_tile=64)
        cast = logps._cast_head(weight, torch.bfloat16)
        assert logps._cast_head(weight, torch.bfloat16) is cast  # kept while the weight is unchanged
        weight.mul_(2.0)
        assert logps._cast_head(weight, torch.bfloat16) is not cast  # an in-place change recasts
    assert got.dtype == torch.float32 and got_grad is not None and want_grad is not None
    torch.testing.assert_close(got, want, atol=0.15, rtol=0.02)  # bf16 logits: a few hundredths
    torch.testing.assert_close(got_grad, want_grad, atol=0.05, rtol=0.05)
