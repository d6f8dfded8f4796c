"""PyTorch's CPU flash attention against attention written as batched matmuls, forward and backward.

    .venv/bin/python benchmarks/attention_kernels.py

The trainer's attention (`preftune.training.attention`) calls `scaled_dot_product_attention`, which on
a CPU runs PyTorch's flash kernel at a fraction of the matmul speed. This measures the obvious
alternative on the block shapes of a prefix-shared orca pair (SmolLM2-135M: 9 query heads, 3 key/value
heads, head size 64): scores as one `baddbmm` per key/value head with its 3 query heads stacked (no
copies of keys and values), softmax, `bmm`, and a hand-written backward (dV = P^T dO, dS = P * (dO V^T -
rowsum(dO * O)), dQ = dS K, dK = dS^T Q). Also SDPA's own math backend. Outputs and gradients are
checked against the flash kernel's before timing.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, KV_HEADS, DIM = 9, 3, 64
GROUP = HEADS // KV_HEADS
# (block length, prefix length): a prompt+preferred block (causal), a non-preferred block over its prompt
SHAPES = [(350, 0), (150, 200), (500, 0), (250, 300)]


class MatmulAttention(torch.autograd.Function):
    """Attention of q [Hkv, G*L, D] over k, v [Hkv, Lk, D] with an additive mask [L, Lk]."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
    ) -> torch.Tensor:
        scores = torch.baddbmm(
            mask.repeat(GROUP, 1).expand(q.shape[0], -1, -1), q, k.transpose(1, 2), alpha=scale
        )
        probs = torch.softmax(scores, dim=-1)
        out = torch.bmm(probs, v)
        ctx.save_for_backward(q, k, v, probs, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, probs, out = ctx.saved_tensors
        grad_v = torch.bmm(probs.transpose(1, 2), grad_out)
        grad_scores = torch.bmm(grad_out, v.transpose(1, 2))
        grad_scores.sub_((grad_out * out).sum(-1, keepdim=True)).mul_(probs)
        grad_q = torch.bmm(grad_scores, k).mul_(ctx.scale)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None, None


def block_mask(length: int, prefix: int) -> torch.Tensor:
    rows = torch.arange(length).unsqueeze(1) + prefix
    cols = torch.arange(prefix + length).unsqueeze(0)
    return torch.zeros(length, prefix + length).masked_fill_(cols > rows, float("-inf"))


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, prefix: int) -> torch.Tensor:
    if prefix:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, prefix: int
) -> torch.Tensor:
    length = q.shape[2]
    out = MatmulAttention.apply(q.reshape(KV_HEADS, GROUP * length, DIM), k[0], v[0], mask, DIM**-0.5)
    return out.view(1, HEADS, length, DIM)


def timed(fn: Callable[[], torch.Tensor], backward: bool, repeats: int = 20) -> float:
    for _ in range(3):
        out = fn()
        if backward:
            out.sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        if backward:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"{torch.get_num_threads()} threads; milliseconds per call (forward / forward+backward)")
    print(f"{'block':>14} {'flash (SDPA)':>16} {'SDPA math':>16} {'baddbmm + hand backward':>24}")
    for length, prefix in SHAPES:
        q = torch.randn(1, HEADS, length, DIM, requires_grad=True)
        k = torch.randn(1, KV_HEADS, prefix + length, DIM, requires_grad=True)
        v = torch.randn(1, KV_HEADS, prefix + length, DIM, requires_grad=True)
        mask = block_mask(length, prefix)
        upstream = torch.randn(1, HEADS, length, DIM)
        reference = torch.autograd.grad(sdpa(q, k, v, mask, prefix), (q, k, v), upstream)
        ours = torch.autograd.grad(matmul_attention(q, k, v, mask, prefix), (q, k, v), upstream)
        error = max((a - b).abs().max().item() for a, b in zip(reference, ours, strict=True))
        assert error < 1e-4, f"matmul attention disagrees with SDPA by {error}"
        row = []
        args = (q, k, v, mask, prefix)
        for fn, backend in [
            (functools.partial(sdpa, *args), SDPBackend.FLASH_ATTENTION),
            (functools.partial(sdpa, *args), SDPBackend.MATH),
            (functools.partial(matmul_attention, *args), SDPBackend.FLASH_ATTENTION),
        ]:
            with sdpa_kernel(backend):
                row.append(f"{timed(fn, False):6.2f} / {timed(fn, True):6.2f}")
        label = f"{length} after {prefix}" if prefix else f"{length} causal"
        print(f"{label:>14} {row[0]:>16} {row[1]:>16} {row[2]:>24}")


if __name__ == "__main__":
    main()
