"""The `device` setting picks the training device, and each device gets its own kernels.

What a CPU machine can show of the CUDA path: `select_device` refuses CUDA where there is none
and names the setting; on a CUDA device the CPU-only kernels (packed linears, the elementwise
RMSNorm and rotary) do not bind, and Liger binds only where `liger-kernel` is installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from preftune.errors import InvalidRequestError
from preftune.kernels.liger import liger_installed
from preftune.training.modeling import bind_kernels, select_device

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def test_cpu_setting_is_honoured() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ", local_rank=3) == torch.device("cpu")


@NO_CUDA
def test_auto_without_cuda_is_the_cpu() -> None:
    assert select_device("auto", local_rank=1) == torch.device("cpu")


@NO_CUDA
@pytest.mark.parametrize("setting", ["cuda", "cuda:0"])
def test_cuda_setting_without_cuda_is_a_named_error(setting: str) -> None:
    with pytest.raises(InvalidRequestError, match="no CUDA device") as info:
        select_device(setting)
    assert info.value.param == "device"


@pytest.mark.parametrize("setting", ["gpu", "cuda:x", "tpu:0"])
def test_unknown_setting_is_a_named_error(setting: str) -> None:
    with pytest.raises(InvalidRequestError, match="use auto, cpu, cuda or cuda:N"):
        select_device(setting)


def _bound(model: nn.Module) -> list[str]:
    """Modules with a forward of their own instance (a kernel bound to them)."""
    return [name for name, module in model.named_modules() if "forward" in vars(module)]


def test_cpu_kernels_bind_on_the_cpu_only(tiny_model_dir: Path) -> None:
    on_cpu = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert bind_kernels(on_cpu, torch.device("cpu"), None) == "cpu"
    assert any(name.endswith("input_layernorm") for name in _bound(on_cpu))
    assert any(name.endswith("self_attn") for name in _bound(on_cpu))

    # The same model as it would be on a GPU (its weights stay here: only the choice is checked).
    on_cuda = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    chosen = bind_kernels(on_cuda, torch.device("cuda", 0), torch.bfloat16)
    if liger_installed():
        assert chosen == "liger"
    else:
        assert chosen == "none"
        assert _bound(on_cuda) == []  # transformers' own code, SDPA attention
