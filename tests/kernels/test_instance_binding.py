"""Kernels bind to the model preftune loads, never to transformers: one process can train one
model and serve another, and the served one runs transformers' own code and numbers."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama import modeling_llama as llama

from preftune.contracts.spec import TrainingSpec
from preftune.inference.batch import load_model
from preftune.kernels import elementwise
from preftune.kernels.attention import IMPLEMENTATION
from preftune.kernels.binding import with_globals
from preftune.training.logps import sequence_logps
from preftune.training.modeling import load_policy
from preftune.training.packing import pack
from preftune.training.tokenize import PairTokens

SCALE = 3.0


def _scaled(x: float) -> float:
    return x * SCALE


def _reads_global(x: float) -> float:
    return _scaled(x) + 1


def _decorator(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) * 10

    return wrapper


@_decorator
def _decorated(x: float) -> float:
    return _scaled(x)


def test_with_globals_changes_the_copy_only_and_keeps_decorators() -> None:
    copy = with_globals(_reads_global, {"_scaled": lambda x: -x})
    assert copy(2.0) == -1.0 and _reads_global(2.0) == 7.0
    decorated = with_globals(_decorated, {"_scaled": lambda x: -x})
    assert decorated(2.0) == -20.0  # the wrapper still runs, around the copy
    assert _decorated(2.0) == 60.0


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_training_one_model_leaves_another_served_in_the_process_alone(tiny_model_dir: Path) -> None:
    ids = torch.randint(3, 500, (1, 17))
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    before = _logits(fresh, ids)
    class_forward = llama.LlamaAttention.forward
    original_rotary = llama.apply_rotary_pos_emb

    # The trainer's model: every kernel switched on, and a training forward through block attention.
    policy = load_policy(TrainingSpec(lora=True, precision="fp32"), tiny_model_dir, torch.device("cpu"))
    pair = PairTokens(prompt=[5, 6, 7, 8], chosen=[9, 10, 11], rejected=[12, 13], index=0)
    sums, _ = sequence_logps(policy.model, pack([pair]))
    sums.sum().backward()
    trained_attention = policy.model.get_base_model().model.layers[0].self_attn
    assert inspect.unwrap(trained_attention.forward.__func__).__globals__["apply_rotary_pos_emb"] is (
        elementwise.apply_rotary_pos_emb
    )
    assert policy.model.get_base_model().config._attn_implementation == IMPLEMENTATION

    # transformers is untouched ...
    assert llama.apply_rotary_pos_emb is original_rotary
    assert llama.LlamaAttention.forward is class_forward
    # ... so a model served in the same process runs transformers' code, with its numbers.
    served, _ = load_model(tiny_model_dir, torch.device("cpu"))
    attention = served.model.layers[0].self_attn
    assert "forward" not in vars(attention)
    assert served.config._attn_implementation != IMPLEMENTATION
    torch.testing.assert_close(_logits(served.float(), ids), before, atol=1e-5, rtol=1e-5)
    assert torch.equal(_logits(fresh, ids), before)
