"""The embedded SmolLM2-135M-Instruct: prefix-shared log-probs match the plain computation, and a step trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from preftune.contracts.base_models import DEFAULT_MODEL, resolve_model
from preftune.contracts.spec import TrainingSpec
from preftune.data import iter_examples
from preftune.training.logps import sequence_logps
from preftune.training.packing import pack
from preftune.training.tokenize import PairTokens, TruncationStats, tokenize_pair
from preftune.training.trainer import train

# Slow: the first use dequantises the embedded GGUF (tens of seconds on two cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_real_model_prefix_sharing_and_one_step(
    pairs_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models_dir = tmp_path_factory.mktemp("real-models")
    path = resolve_model(DEFAULT_MODEL, models_dir)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()
    examples = list(iter_examples(pairs_file))[:1]
    pairs = [
        tokenize_pair(
            tok, i, list(e.messages), dict(e.preferred), dict(e.non_preferred), 128, TruncationStats()
        )
        for i, e in enumerate(examples)
    ]
    assert all(isinstance(p, PairTokens) for p in pairs)
    with torch.no_grad():
        sums, _ = sequence_logps(model, pack(pairs))  # type: ignore[arg-type]
        for i, pair in enumerate(pairs):
            assert isinstance(pair, PairTokens)
            for k, answer in enumerate((pair.chosen, pair.rejected)):
                ids = torch.tensor([pair.prompt + answer])
                logits = model(input_ids=ids).logits[0, :-1].float()
                plain = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
                assert sums[2 * i + k].item() == pytest.approx(
                    plain[len(pair.prompt) - 1 :].sum().item(), abs=2e-3
                )

    out = tmp_path_factory.mktemp("real-run")
    spec = TrainingSpec(max_length=64, batch_size=2, max_steps=1, precision="fp32")
    result = train(spec, model=DEFAULT_MODEL, training_file=pairs_file, output_dir=out, models_dir=models_dir)
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert line["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert line["logps/chosen"] < 0 and line["grad_norm"] > 0
    assert result.adapter_path is not None and (result.adapter_path / "adapter_model.safetensors").is_file()
