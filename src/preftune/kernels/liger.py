"""Liger's Triton kernels (`liger-kernel`, where installed) bound to one model instance, on CUDA.

The CUDA counterpart of `kernels.elementwise`: RMSNorm, the SwiGLU MLP and the rotary embedding of
Llama-style models run Liger's fused kernels. Like everything in `kernels/`, the kernels bind to the
instance (`kernels.binding`), never to transformers' modules: Liger's own `apply_liger_kernel_to_*`
replaces classes and functions in transformers' modeling modules for the whole process, so it is
not used. Not installed, or not on CUDA: nothing binds and the model runs transformers' code.

Verified only as far as a CPU machine can: without a GPU the kernels cannot run here (see
`benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import importlib.util
import types
from typing import Any

import torch
from torch import nn

from preftune.kernels.binding import bind_method_globals, global_names
from preftune.kernels.elementwise import RMSNORM_CLASSES, ROTARY_MODULES

MLP_CLASSES = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _rms_norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    return LigerRMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon, 0.0, "llama")  # type: ignore[no-any-return]


def _swiglu_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    return self.down_proj(LigerSiLUMulFunction.apply(self.gate_proj(x), self.up_proj(x)))  # type: ignore[no-any-return]


def _is_silu(act: Any) -> bool:
    """transformers' SiLU (its own class or torch's): SwiGLU's activation, the one Liger fuses."""
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def use_liger_kernels(model: nn.Module, device: torch.device) -> int:
    """Bind Liger's RMSNorm, SwiGLU and rotary kernels to `model`'s modules; returns how many.

    0 (nothing bound) off CUDA or without `liger-kernel`.
    """
    if device.type != "cuda" or not liger_installed():
        return 0
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    count = 0
    for module in model.modules():
        name = type(module).__name__
        if name in RMSNORM_CLASSES and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rms_norm_forward, module)  # type: ignore[method-assign]
        elif name in MLP_CLASSES and _is_silu(getattr(module, "act_fn", None)):
            module.forward = types.MethodType(_swiglu_forward, module)  # type: ignore[method-assign]
        elif (
            type(module).__module__ in ROTARY_MODULES
            and "apply_rotary_pos_emb" in global_names(type(module).forward)
            and "forward" not in vars(module)
        ):
            bind_method_globals(module, "forward", {"apply_rotary_pos_emb": liger_rotary_pos_emb})
        else:
            continue
        count += 1
    return count
