"""PyTorch's CPU flash attention against attention written as batched matmuls, forward and backward.

    .venv/bin/python benchmarks/attention_kernels.py

The trainer's attention (`preftune.kernels.attention`) calls `scaled_dot_product_attention`, which on
a CPU runs PyTorch's flash kernel at a fraction of the matmul speed. This measures the obvious
alternative on the block shapes of a prefix-shared orca pair (SmolLM2-135M: 9 query heads, 3 key/value
heads, head size 64): scores as one `baddbmm` per key/value head with its 3 query heads stacked (no
copies of keys and values), softmax, `bmm`, and a hand-written backward (dV = P^T dO, dS = P * (dO V^T -
rowsum(dO * O)), dQ = dS K, dK = dS^T Q). Also SDPA's own math backend, and, for a block after a
prompt, the masked kernel's alternative that skips the masked-out half of the block's own keys: the
flash kernel twice, unmasked over the prompt and causal over the block, outputs merged by their
log-sum-exps, and both backward kernels called with the merged output (exact, as in ring attention).
Outputs and gradients are checked against the flash kernel's before timing.
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


class SplitPrefixAttention(torch.autograd.Function):
    """A block's queries over prompt keys (unmasked) and its own keys (causal), merged exactly."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        out_p, lse_p = flash(q, kp, vp, 0.0, False)
        out_s, lse_s = flash(q, k, v, 0.0, True)
        lse = torch.logaddexp(lse_p, lse_s)
        out = out_p * (lse_p - lse).exp().unsqueeze(-1) + out_s * (lse_s - lse).exp().unsqueeze(-1)
        ctx.save_for_backward(q, kp, vp, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, kp, vp, k, v, out, lse = ctx.saved_tensors
        flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        grad_out = grad_out.contiguous()
        grad_q_p, grad_kp, grad_vp = flash_backward(grad_out, q, kp, vp, out, lse, 0.0, False)
        grad_q_s, grad_k, grad_v = flash_backward(grad_out, q, k, v, out, lse, 0.0, True)
        return grad_q_p + grad_q_s, grad_kp, grad_vp, grad_k, grad_v


def split_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, prefix: int
) -> torch.Tensor:
    if not prefix:
        return sdpa(q, k, v, mask, prefix)
    out: torch.Tensor = SplitPrefixAttention.apply(
        q, k[:, :, :prefix], v[:, :, :prefix], k[:, :, prefix:], v[:, :, prefix:]
    )
    return out


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
    print(
        f"{'block':>14} {'flash (SDPA)':>16} {'SDPA math':>16} {'baddbmm + hand backward':>24} "
        f"{'flash split + merge':>20}"
    )
    for length, prefix in SHAPES:
        q = torch.randn(1, HEADS, length, DIM, requires_grad=True)
        k = torch.randn(1, KV_HEADS, prefix + length, DIM, requires_grad=True)
        v = torch.randn(1, KV_HEADS, prefix + length, DIM, requires_grad=True)
        mask = block_mask(length, prefix)
        upstream = torch.randn(1, HEADS, length, DIM)
        reference = torch.autograd.grad(sdpa(q, k, v, mask, prefix), (q, k, v), upstream)
        for candidate in (matmul_attention, split_attention):
            ours = torch.autograd.grad(candidate(q, k, v, mask, prefix), (q, k, v), upstream)
            error = max((a - b).abs().max().item() for a, b in zip(reference, ours, strict=True))
            assert error < 1e-4, f"{candidate.__name__} disagrees with SDPA by {error}"
        row = []
        args = (q, k, v, mask, prefix)
        for fn, backend in [
            (functools.partial(sdpa, *args), SDPBackend.FLASH_ATTENTION),
            (functools.partial(sdpa, *args), SDPBackend.MATH),
            (functools.partial(matmul_attention, *args), SDPBackend.FLASH_ATTENTION),
            (functools.partial(split_attention, *args), SDPBackend.FLASH_ATTENTION),
        ]:
            with sdpa_kernel(backend):
                row.append(f"{timed(fn, False):6.2f} / {timed(fn, True):6.2f}")
        label = f"{length} after {prefix}" if prefix else f"{length} causal"
        split = row[3] if prefix else "(same as flash)"
        print(f"{label:>14} {row[0]:>16} {row[1]:>16} {row[2]:>24} {split:>20}")


if __name__ == "__main__":
    main()
