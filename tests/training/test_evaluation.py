"""`preftune eval`'s figures (training.evaluation) and the command, on the tiny model and an adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from preftune.cli.main import app
from preftune.training.evaluation import evaluate


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter whose B matrices are random (PEFT's init_lora_weights=False): it moves the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, config)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_an_adapter_is_judged_beside_its_base(
    adapter_dir: Path, tiny_model_dir: Path, eval_pairs_file: Path, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    result = evaluate(
        str(adapter_dir),
        eval_pairs_file,
        models_dir=tmp_path,
        max_length=64,
        batch_size=4,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert result["n_pairs"] == 6 and seen == [(4, 6), (6, 6)]
    base, mine = result["base"], result["model"]
    # The base model against itself: DPO loss ln 2, zero rewards, by construction.
    assert base["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert base["rewards/margins"] == pytest.approx(0.0, abs=1e-6) and base["rewards/accuracies"] == 0.0
    assert mine["loss"] != pytest.approx(math.log(2), abs=1e-4), "a random adapter moves the loss"
    for figures in (base, mine):
        for key in ("preference_accuracy", "preference_accuracy_normalized"):
            assert 0.0 <= figures[key] <= 1.0
    assert mine["logps/chosen"] != pytest.approx(base["logps/chosen"])

    # The base model judged alone has the same figures as the adapter run's base column.
    alone = evaluate(str(tiny_model_dir), eval_pairs_file, models_dir=tmp_path, max_length=64, batch_size=4)
    assert alone["adapter"] is None and alone["model"] == pytest.approx(alone["base"])
    for key in ("preference_accuracy", "preference_accuracy_normalized", "logps/chosen", "logps/rejected"):
        assert alone["model"][key] == pytest.approx(base[key], abs=1e-4)


def test_the_command_shows_the_table_and_writes_json(
    adapter_dir: Path, eval_pairs_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "figures.json"
    result = CliRunner().invoke(
        app,
        ["eval", str(adapter_dir), str(eval_pairs_file), "--max-length", "64", "--json", str(out)],
        env={"PREFTUNE_HOME": str(tmp_path / "home")},
    )
    assert result.exit_code == 0, result.output
    assert "preference accuracy" in result.output and "DPO loss vs reference" in result.output
    written = json.loads(out.read_text())
    assert written["n_pairs"] == 6 and set(written["model"]) == set(written["base"])
    bad = CliRunner().invoke(app, ["eval", str(adapter_dir), str(tmp_path / "missing.jsonl")])
    assert bad.exit_code != 0 and "does not exist" in bad.output
