"""A faster forward for PEFT's LoRA linear layers, for the common case.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as separate operations: on top of
the two matmuls, a multiplication and an addition each read and write a full `[tokens, out]`
tensor, in the forward and again in the backward pass. `addmm` folds both into the `lora_B`
matmul (`base + scaling * h @ B.T`), which is the same arithmetic in one pass over the output.

The fast path is taken only for a single active plain LoRA adapter (no DoRA or other variant, no
bias on `lora_B`, not merged, adapters enabled, no per-row `adapter_names`); everything else goes
to PEFT's own forward unchanged.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


def _fused_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    peft_forward = type(self).forward
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return peft_forward(self, x, *args, **kwargs)  # type: ignore[no-any-return]
    name = self.active_adapters[0]
    if name not in self.lora_A or name in self.lora_variant or self.lora_B[name].bias is not None:
        return peft_forward(self, x, *args, **kwargs)  # type: ignore[no-any-return]
    result = self.base_layer(x)
    lora_a = self.lora_A[name]
    # PEFT casts the input to the adapter's (float32) dtype; under autocast the matmul casts it straight
    # back, so the cast would only cost copies: two of the input, and two of its gradient backwards.
    if not torch.is_autocast_enabled(x.device.type):
        x = self._cast_input_dtype(x, lora_a.weight.dtype)
    h = lora_a(self.lora_dropout[name](x))
    out = torch.addmm(
        result.reshape(-1, result.shape[-1]),
        h.reshape(-1, h.shape[-1]),
        self.lora_B[name].weight.t(),
        alpha=self.scaling[name],
    )
    return out.view(result.shape).to(result.dtype)


def fuse_lora_layers(model: nn.Module) -> int:
    """Give every PEFT LoRA `Linear` in `model` the fused forward; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = types.MethodType(_fused_lora_forward, module)  # type: ignore[method-assign]
            count += 1
    return count
