"""The hand-written RMSNorm and rotary backward passes give transformers' values and gradients."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import transformers.models.llama.modeling_llama as llama
from transformers import AutoModelForCausalLM

from preftune.kernels import elementwise
from preftune.kernels.elementwise import apply_rotary_pos_emb, rms_norm, use_fast_elementwise


def test_rms_norm_gradients_are_exact() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-5), (x, weight))


def test_rotary_gradients_are_exact_for_any_tables() -> None:
    # Random cos/sin (halves unequal, unlike Llama's) check the transposed rotation in general.
    torch.manual_seed(0)
    q = torch.randn(1, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = torch.randn(1, 9, 8, dtype=torch.float64), torch.randn(1, 9, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k: apply_rotary_pos_emb(q, k, cos, sin), (q, k))


def test_values_equal_transformers() -> None:
    torch.manual_seed(0)
    norm = llama.LlamaRMSNorm(32, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(rms_norm(x, norm.weight, norm.variance_epsilon), norm(x), atol=0, rtol=0)
    q, k = torch.randn(1, 5, 4, 8).transpose(1, 2), torch.randn(1, 5, 2, 8).transpose(1, 2)
    cos, sin = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    for ours, theirs in zip(
        apply_rotary_pos_emb(q, k, cos, sin), llama.apply_rotary_pos_emb(q, k, cos, sin), strict=True
    ):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def forward_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    logits = model(input_ids=ids).logits
    logits.pow(2).mean().backward()
    return logits.detach(), [
        p.grad.clone() for _, p in sorted(model.named_parameters()) if p.grad is not None
    ]


@pytest.mark.parametrize("frozen_norms", [False, True])
def test_a_switched_model_equals_the_original(tiny_model_dir: Path, frozen_norms: bool) -> None:
    original_rotary = llama.apply_rotary_pos_emb
    ids = torch.randint(3, 500, (2, 13))
    results = []
    for switched in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
        for name, param in model.named_parameters():
            if frozen_norms and "norm" in name:
                param.requires_grad_(False)
        if switched:
            layers = model.config.num_hidden_layers
            # Two norms a layer and the final one, plus each layer's attention.
            assert use_fast_elementwise(model) == 3 * layers + 1
            assert use_fast_elementwise(model) == 2 * layers + 1  # attention is not switched twice
            assert llama.apply_rotary_pos_emb is original_rotary  # transformers' module untouched
            attention = model.model.layers[0].self_attn
            assert (
                inspect.unwrap(attention.forward.__func__).__globals__["apply_rotary_pos_emb"]
                is elementwise.apply_rotary_pos_emb
            )
        results.append(forward_and_grads(model, ids))
    (plain_logits, plain_grads), (fast_logits, fast_grads) = results
    torch.testing.assert_close(fast_logits, plain_logits, atol=1e-5, rtol=1e-5)
    assert len(fast_grads) == len(plain_grads) > 0
    for fast, plain in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)
