"""Frozen linear layers as oneDNN matmuls with their weights packed once, on x86 CPUs.

PyTorch's CPU `F.linear` hands float32 matmuls to MKL's sgemm, which on the AMD EPYC this project is
measured on runs at 65-105 GFLOP/s; oneDNN (also inside every x86 PyTorch build) with the weight
reordered once into its own blocked layout runs the same products at 96-139 GFLOP/s, and (alone, in
cache) at twice MKL's speed for the few-row products of decoding. A frozen weight never changes, so the reordering
is paid once per layer instead of once per call (unpacked oneDNN, which reorders on every call, is
slower than MKL in a training pass).

What it buys, measured on smollm2-135m-instruct (2 cores, `benchmarks/RESULTS.md`): a training pass
(reference forward, policy forward and backward) 10% faster; a lone request's prefill and a decode step
10-20% faster (a padded 10 x 16 prefill gained nothing). The results differ from MKL's by float32
rounding only (summation order).

Only frozen float32 layers on the CPU take this path, in float32 or, under bf16 autocast, in bf16 (a
bf16 copy packed once: autocast would cast the frozen weight again on every call; a training pass 10%
faster on an AVX512-BF16 EPYC); anything else (a weight that trains, CUDA, another autocast dtype, a
build without oneDNN) goes through `nn.Linear`'s own forward unchanged. Packed
copies are made when the model is prepared (the transposed ones on the first backward pass) and
redone when the weight changes in place (a merge, a loaded state dict): they cost one more copy of the frozen weights (two while training: the backward pass multiplies by
the transposed weight). The output layer is left alone: the trainer streams it tile by tile, and
generation only runs it on the last position.
"""

from __future__ import annotations

import functools
import types
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from preftune.kernels.autocast import autocast_dtype


@functools.cache
def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build can run packed oneDNN linears in `dtype` (and they give the right numbers)."""
    if not torch.backends.mkldnn.is_available():
        return False
    # Fixed numbers, not torch.randn: this may first run inside a seeded training run, whose random
    # stream (LoRA's initialisation, dropout) must not depend on whether it ran before.
    weight = torch.linspace(-1.0, 1.0, 32).reshape(8, 4)
    x = torch.linspace(0.5, -0.5, 12).reshape(3, 4)
    try:
        out = _matmul(x.to(dtype), _pack(weight.to(dtype)), None).float()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.allclose(out, x @ weight.t(), atol=1e-5 if dtype == torch.float32 else 2e-2))


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())


@dataclass
class _Packed:
    """A layer's weight (in the dtype it is packed in) packed for oneDNN, its transpose packed on the
    first backward pass, and the weight's version and storage when it was packed (an in-place change
    makes it stale)."""

    source: tuple[int, int]
    weight: torch.Tensor
    forward: torch.Tensor
    _transposed: torch.Tensor | None = None

    def transposed(self) -> torch.Tensor:
        if self._transposed is None:
            self._transposed = _pack(self.weight.t())
        return self._transposed


# Keyed by module, outside it: a packed (mkldnn) tensor cannot be deep-copied or saved, so a copy of
# the model simply packs its own weights when it first runs. Per module, one packing per compute dtype
# (float32, and bfloat16 under CPU autocast).
_PACKED: weakref.WeakKeyDictionary[nn.Linear, dict[torch.dtype, _Packed]] = weakref.WeakKeyDictionary()


def _packed(layer: nn.Linear, dtype: torch.dtype = torch.float32) -> _Packed:
    weight = layer.weight.detach()
    source = (weight._version, weight.data_ptr())
    by_dtype = _PACKED.setdefault(layer, {})
    packed = by_dtype.get(dtype)
    if packed is None or packed.source != source:
        cast = weight.to(dtype)
        packed = _Packed(source=source, weight=cast, forward=_pack(cast))
        by_dtype[dtype] = packed
    return packed


def _matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _PackedFrozenLinear(torch.autograd.Function):
    """y = x W^T + b with W and b frozen: the only gradient is the input's, grad_y W."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, packed: _Packed
    ) -> torch.Tensor:
        ctx.packed = packed
        return _matmul(x, packed.forward, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _matmul(grad, ctx.packed.transposed(), None), None, None


def _frozen_cpu_float32(layer: nn.Linear) -> bool:
    weight, bias = layer.weight, layer.bias
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and not weight.requires_grad
        and (bias is None or not bias.requires_grad)
    )


def _packed_dtype(layer: nn.Linear, x: torch.Tensor) -> torch.dtype | None:
    """The dtype the packed path computes `layer(x)` in, or None for `nn.Linear`'s own forward.

    Under CPU bf16 autocast that is bfloat16, as autocast would run `F.linear` (inputs cast to bf16,
    float32 accumulation, a bf16 result), but without casting the frozen weight again on every call.
    """
    if not (_frozen_cpu_float32(layer) and x.device.type == "cpu"):
        return None
    dtype = autocast_dtype("cpu")
    if dtype is not None:
        return dtype if dtype == torch.bfloat16 and available(dtype) else None
    return torch.float32 if x.dtype == torch.float32 else None


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    dtype = _packed_dtype(self, x)
    if dtype is None:
        return nn.Linear.forward(self, x)
    packed = _packed(self, dtype)
    bias = None if self.bias is None else self.bias.detach().to(dtype)
    x = x.to(dtype)  # a no-op in float32; under autocast, autograd casts the gradient back
    if torch.is_grad_enabled() and x.requires_grad:
        return _PackedFrozenLinear.apply(x, bias, packed)  # type: ignore[no-any-return]
    return _matmul(x, packed.forward, bias)


def pack_frozen_linears(model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Give every plain `nn.Linear` of `model` but its output layer the packed forward; returns how many.

    Frozen float32 CPU weights are packed right away for `dtype`, the dtype they will compute in
    (bfloat16 for a model run under bf16 autocast; a first request or step would pay it otherwise);
    the forward decides per call, so a layer that starts training later (or moves to a GPU) simply
    stops taking the packed path. A no-op (0) where oneDNN is not available.
    """
    if not available():
        return 0
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and module is not output:
            module.forward = types.MethodType(_packed_forward, module)  # type: ignore[method-assign]
            count += 1
            if _frozen_cpu_float32(module) and available(dtype):
                _packed(module, dtype)  # now, while the model loads, not inside the first request or step
    return count
