"""The fused LoRA forward gives PEFT's outputs and gradients, and steps aside when it does not apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from preftune.kernels.fused import fuse_lora_layers


def lora_model(tiny_model_dir: Path, fused: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the update non-zero so the test means something
            torch.nn.init.normal_(param, std=0.1)
    if fused:
        assert fuse_lora_layers(peft_model) > 0
    return peft_model


def forward_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    logits = model(input_ids=ids).logits
    logits.float().pow(2).mean().backward()
    grads = [p.grad.clone() for _, p in sorted(model.named_parameters()) if p.grad is not None]
    return logits.detach(), grads


def autograd_ops(output: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [output.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(next_fn for next_fn, _ in fn.next_functions)
    return names


def test_fused_lora_matches_peft(tiny_model_dir: Path) -> None:
    ids = torch.randint(3, 500, (2, 11))
    assert "AddmmBackward0" in autograd_ops(lora_model(tiny_model_dir, fused=True)(input_ids=ids).logits)
    assert "AddmmBackward0" not in autograd_ops(lora_model(tiny_model_dir, fused=False)(input_ids=ids).logits)
    plain_logits, plain_grads = forward_and_grads(lora_model(tiny_model_dir, fused=False), ids)
    fused_logits, fused_grads = forward_and_grads(lora_model(tiny_model_dir, fused=True), ids)
    torch.testing.assert_close(fused_logits, plain_logits, atol=1e-5, rtol=1e-5)
    assert len(fused_grads) == len(plain_grads) > 0
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["disabled", "merged"])
def test_fused_lora_defers_to_peft_when_adapters_are_off_or_merged(tiny_model_dir: Path, mode: str) -> None:
    ids = torch.randint(3, 500, (1, 7))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model: object = lora_model(tiny_model_dir, fused=True)
    with torch.no_grad():
        if mode == "disabled":
            with model.disable_adapter():  # type: ignore[attr-defined]
                got = model(input_ids=ids).logits  # type: ignore[operator]
            torch.testing.assert_close(got, expected)
        else:
            unmerged = model(input_ids=ids).logits  # type: ignore[operator]
            model.merge_adapter()  # type: ignore[attr-defined]
            got = model(input_ids=ids).logits  # type: ignore[operator]
            torch.testing.assert_close(got, unmerged, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(got, expected)
