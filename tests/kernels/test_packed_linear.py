"""Packed oneDNN linears give nn.Linear's outputs and gradients, and step aside where they do not apply."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from preftune.kernels import packed_linear
from preftune.kernels.packed_linear import pack_frozen_linears

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="this PyTorch build has no oneDNN")


def packed_path_taken(layer: nn.Linear, x: torch.Tensor) -> bool:
    return packed_linear._packed_dtype(layer, x) is not None


def frozen_layer(bias: bool = True) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    plain = nn.Linear(24, 40, bias=bias).requires_grad_(False)
    packed = copy.deepcopy(plain)
    assert pack_frozen_linears(packed) == 1
    return plain, packed


@pytest.mark.parametrize("shape", [(7, 24), (2, 5, 24), (1, 1, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_forward_and_input_gradient_match_linear(shape: tuple[int, ...], bias: bool) -> None:
    plain, packed = frozen_layer(bias)
    x = torch.randn(shape, requires_grad=True)
    x_packed = x.detach().clone().requires_grad_(True)
    assert packed_path_taken(packed, x_packed)
    out_plain, out_packed = plain(x), packed(x_packed)
    torch.testing.assert_close(out_packed, out_plain, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out_plain.shape)
    out_plain.backward(grad)
    out_packed.backward(grad)
    torch.testing.assert_close(x_packed.grad, x.grad, atol=1e-5, rtol=1e-5)


def test_a_weight_that_trains_takes_linears_own_path_and_gets_its_gradient() -> None:
    plain, packed = frozen_layer()
    plain.requires_grad_(True)
    packed.requires_grad_(True)
    x = torch.randn(3, 24)
    assert not packed_path_taken(packed, x)
    plain(x).sum().backward()
    packed(x).sum().backward()
    assert packed.weight.grad is not None
    torch.testing.assert_close(packed.weight.grad, plain.weight.grad)


def test_a_weight_changed_in_place_is_packed_again() -> None:
    plain, packed = frozen_layer()
    x = torch.randn(4, 24)
    packed(x)  # packs the weight as it is now
    with torch.no_grad():
        for layer in (plain, packed):
            layer.weight.mul_(-2.0)
    torch.testing.assert_close(packed(x), plain(x), atol=1e-5, rtol=1e-5)
    packed.load_state_dict({"weight": torch.zeros(40, 24), "bias": torch.ones(40)})
    torch.testing.assert_close(packed(x), torch.ones(4, 40))


def test_other_dtypes_and_other_autocast_dtypes_are_left_to_linear() -> None:
    _, packed = frozen_layer()
    assert not packed_path_taken(packed, torch.randn(2, 24, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.float16):
        assert not packed_path_taken(packed, torch.randn(2, 24))


@pytest.mark.skipif(not packed_linear.available(torch.bfloat16), reason="no bf16 oneDNN matmul here")
def test_under_bf16_autocast_the_packed_path_computes_what_autocast_would() -> None:
    """bf16 inputs and weight, a bf16 result, the input's gradient back in its own dtype."""
    plain, packed = frozen_layer()
    x = torch.randn(6, 24, requires_grad=True)
    x_packed = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert packed_linear._packed_dtype(packed, x_packed) == torch.bfloat16
        out_plain, out_packed = plain(x), packed(x_packed)
    assert out_packed.dtype == out_plain.dtype == torch.bfloat16
    torch.testing.assert_close(out_packed, out_plain, atol=2e-2, rtol=1e-2)
    grad = torch.randn(out_plain.shape, dtype=torch.bfloat16)
    out_plain.backward(grad)
    out_packed.backward(grad)
    assert x_packed.grad is not None and x_packed.grad.dtype == torch.float32
    torch.testing.assert_close(x_packed.grad, x.grad, atol=2e-2, rtol=1e-2)


def test_lora_model_with_packed_base_layers_matches_peft(tiny_model_dir: Path) -> None:
    """The trainer's case: PEFT LoRA on every linear layer, frozen base layers packed."""

    def lora_model() -> nn.Module:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter's path count
                torch.nn.init.normal_(param, std=0.1)
        return peft_model

    ids = torch.randint(3, 500, (2, 11))
    plain, packed = lora_model(), lora_model()
    layers = sum(1 for m in packed.modules() if type(m) is nn.Linear)
    # Every base layer and every LoRA A/B is a plain nn.Linear; the output layer is not packed.
    assert pack_frozen_linears(packed) == layers - 1
    results = []
    for model in (plain, packed):
        logits = model(input_ids=ids).logits
        logits.pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad(), model.disable_adapter():
            reference = model(input_ids=ids).logits
        results.append((logits.detach(), grads, reference))
    (plain_logits, plain_grads, plain_ref), (packed_logits, packed_grads, packed_ref) = results
    torch.testing.assert_close(packed_logits, plain_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_ref, plain_ref, atol=1e-5, rtol=1e-5)
    assert packed_grads.keys() == plain_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4)
    # A copy of the packed model (packed tensors cannot be copied) packs its own weights.
    torch.testing.assert_close(copy.deepcopy(packed)(input_ids=ids).logits, packed_logits)
