"""`train()` end to end on a tiny model: outputs, callbacks, stopping, accumulation, reference models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import preftune.training.trainer as trainer_module
from preftune.contracts.spec import TrainingSpec
from preftune.errors import DataValidationError, InvalidRequestError, ModelNotFoundError, TrainingSpecError
from preftune.training.callbacks import TrainCallbacks
from preftune.training.trainer import train

TRAIN_KEYS = {
    "step",
    "epoch",
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "pairs_per_s",
    "model_flops_per_s",
    "mfu",
}


def small(**overrides: Any) -> TrainingSpec:
    params: dict[str, Any] = {
        "max_length": 64,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "precision": "fp32",
        "max_steps": 2,
    }
    params.update(overrides)
    return TrainingSpec(**params)


class Recorder(TrainCallbacks):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.steps: list[dict[str, Any]] = []
        self.polls = 0
        self.stop_after = stop_after

    def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
        assert message
        self.events.append((type, data))

    def on_step(self, metrics: dict[str, Any]) -> None:
        self.steps.append(metrics)

    def should_stop(self) -> bool:
        self.polls += 1
        train_steps = [m for m in self.steps if m.get("split") == "train"]
        return self.stop_after is not None and len(train_steps) >= self.stop_after


def read_metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_lora_dpo_run_writes_every_output(
    tiny_model_dir: Path, pairs_file: Path, eval_pairs_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    recorder = Recorder()
    result = train(
        small(max_steps=3, n_checkpoints=2, n_evals=1, merge=True),
        model=str(tiny_model_dir),
        training_file=pairs_file,
        validation_file=eval_pairs_file,
        output_dir=out,
        models_dir=tmp_path / "models",
        callbacks=recorder,
    )
    assert result.status == "completed" and result.steps == 3 == result.total_steps

    lines = read_metrics(out)
    train_lines = [line for line in lines if line["split"] == "train"]
    assert [line["step"] for line in train_lines] == [1, 2, 3]
    for line in train_lines:
        assert set(line) >= TRAIN_KEYS, TRAIN_KEYS - set(line)
    # LoRA's B starts at zero, so at step 1 the policy is the reference: DPO loss is exactly ln 2.
    assert train_lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert train_lines[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert train_lines[-1]["rewards/margins"] > 0, "three steps at lr 1e-3 move the margin"
    evals = [line for line in lines if line["split"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 3 and "rewards/accuracies" in evals[0]

    # Callbacks saw the events, every step with progress fields, and were polled per micro-step.
    types = [t for t, _ in recorder.events]
    assert types[0] == "TRAINING_START" and types[-1] == "TRAINING_COMPLETE"
    assert "EVAL" in types and types.count("CHECKPOINT_SAVE") == 2
    assert [m["total_steps"] for m in recorder.steps] == [3] * 4
    assert recorder.steps[-2]["eta_seconds"] == 0
    assert recorder.polls >= 3

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-3"]
    report = json.loads((out / "train_report.json").read_text())
    assert report["status"] == "completed" and report["n_examples"] == 16
    assert report["truncation"]["prompts_truncated"] > 0, "Orca prompts do not fit in 64 tokens"
    assert report["tokens_seen"] > 0 and report["wall_time_s"] > 0
    assert report["final_metrics"]["step"] == 3 and report["final_eval_metrics"]["split"] == "eval"

    # The adapter loads with PEFT; the merged model with plain transformers, and they agree.
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, result.adapter_path)
        adapted_logits = adapted(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(result.merged_path)
        merged_logits = merged(input_ids=ids).logits
    assert not torch.allclose(base_logits, adapted_logits, atol=1e-6), "the adapter changed the model"
    torch.testing.assert_close(adapted_logits, merged_logits, atol=1e-4, rtol=1e-4)
    assert (result.merged_path / "tokenizer.json").is_file()


def test_should_stop_ends_the_run_promptly(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    recorder = Recorder(stop_after=1)
    result = train(
        small(max_steps=4),
        model=str(tiny_model_dir),
        training_file=pairs_file,
        output_dir=tmp_path / "run",
        models_dir=tmp_path,
        callbacks=recorder,
    )
    assert result.stopped and result.steps == 1
    assert result.adapter_path is None and not (tmp_path / "run" / "adapter").exists()
    assert json.loads((tmp_path / "run" / "train_report.json").read_text())["status"] == "stopped"


def test_gradient_accumulation_matches_one_big_batch(
    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    """8 x 1 equals 4 x 2, and equals 8 x 1 cut into several forward passes by tokens_per_forward."""
    from safetensors.torch import load_file

    runs = {}
    for name, batch, accumulation, per_forward in (
        ("8x1", 8, 1, "auto"),
        ("4x2", 4, 2, "auto"),
        ("8x1-passes", 8, 1, 100),
    ):
        spec = small(
            batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=2,
            tokens_per_forward=per_forward,
        )
        result = train(
            spec,
            model=str(tiny_model_dir),
            training_file=pairs_file,
            output_dir=tmp_path / name,
            models_dir=tmp_path,
        )
        assert result.report["tokens_per_forward"] == (100 if per_forward == 100 else 2048)
        runs[name] = (read_metrics(tmp_path / name), result.adapter_path)
    a, a_dir = runs["8x1"]
    for other in ("4x2", "8x1-passes"):
        b, b_dir = runs[other]
        for x, y in zip(a, b, strict=True):
            for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5), (other, key)
        wa = load_file(str(a_dir / "adapter_model.safetensors"))
        wb = load_file(str(b_dir / "adapter_model.safetensors"))
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-4)


def test_full_finetune_caches_reference_logps(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "full"
    result = train(
        small(lora=False, learning_rate=1e-4),
        model=str(tiny_model_dir),
        training_file=pairs_file,
        output_dir=out,
        models_dir=tmp_path,
    )
    assert result.model_path == out / "model" and result.adapter_path is None
    cache = torch.load(out / "reference_logps.pt")
    assert cache["train"].shape == (16, 2)
    lines = read_metrics(out)
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-5), "the cache holds the starting policy"
    assert lines[1]["rewards/chosen"] != 0.0
    AutoModelForCausalLM.from_pretrained(result.model_path)


def test_sft_then_dpo_uses_the_sft_model_as_reference(
    tiny_model_dir: Path, sft_file: Path, pairs_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compute the first step's reference for real: taken from the policy, it would equal it by construction.
    monkeypatch.setattr(trainer_module, "REUSE_POLICY_AS_REFERENCE", False)
    sft = train(
        small(training_method="sft", learning_rate=1e-2),
        model=str(tiny_model_dir),
        training_file=sft_file,
        output_dir=tmp_path / "sft",
        models_dir=tmp_path,
    )
    sft_lines = read_metrics(tmp_path / "sft")
    assert "nll" in sft_lines[0] and "examples_per_s" in sft_lines[0]
    assert sft.adapter_path is not None

    dpo = train(
        small(from_checkpoint=str(tmp_path / "sft")),
        model=str(tiny_model_dir),
        training_file=pairs_file,
        output_dir=tmp_path / "dpo",
        models_dir=tmp_path,
    )
    lines = read_metrics(tmp_path / "dpo")
    # Policy and reference both start as the SFT model: zero margin at step 1. Had the reference been the
    # base model (adapters off), the SFT adapter would already show as a non-zero reward.
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert lines[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    PeftModel.from_pretrained(base, dpo.adapter_path)


def test_simpo_runs_without_a_reference(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    train(
        small(simpo_gamma=0.5, dpo_beta=2.0, max_steps=1, rpo_alpha=1.0),
        model=str(tiny_model_dir),
        training_file=pairs_file,
        output_dir=tmp_path / "simpo",
        models_dir=tmp_path,
    )
    line = read_metrics(tmp_path / "simpo")[0]
    assert line["rewards/chosen"] < 0 and "nll" in line


def test_user_errors_name_what_to_fix(
    tiny_model_dir: Path, pairs_file: Path, sft_file: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = pairs_file.read_text().splitlines()
    row = json.loads(lines[1])
    row["preferred_output"][0]["role"] = "user"
    bad.write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    with pytest.raises(DataValidationError, match="line 2") as exc:
        train(
            small(),
            model=str(tiny_model_dir),
            training_file=bad,
            output_dir=tmp_path / "a",
            models_dir=tmp_path,
        )
    assert exc.value.param == "training_file"
    with pytest.raises(DataValidationError, match="training_method=sft"):
        train(
            small(),
            model=str(tiny_model_dir),
            training_file=sft_file,
            output_dir=tmp_path / "b",
            models_dir=tmp_path,
        )
    with pytest.raises(ModelNotFoundError, match="local Hugging Face cache"):
        train(
            small(),
            model="no-such-model",
            training_file=pairs_file,
            output_dir=tmp_path / "c",
            models_dir=tmp_path,
        )
    with pytest.raises(TrainingSpecError, match="checkpoints/step-N") as exc3:
        train(
            small(from_checkpoint=str(tmp_path / "nothing")),
            model=str(tiny_model_dir),
            training_file=pairs_file,
            output_dir=tmp_path / "e",
            models_dir=tmp_path,
        )
    assert exc3.value.param == "from_checkpoint"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metrics.jsonl").write_text("")
    with pytest.raises(InvalidRequestError, match="--resume") as exc2:
        train(
            small(),
            model=str(tiny_model_dir),
            training_file=pairs_file,
            output_dir=tmp_path / "d",
            models_dir=tmp_path,
        )
    assert exc2.value.param == "output_dir"


@pytest.mark.parametrize("continued", [False, True])
def test_first_step_reference_taken_from_the_policy_changes_nothing(
    tiny_model_dir: Path,
    pairs_file: Path,
    eval_pairs_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    continued: bool,
) -> None:
    """Before the first optimizer step a LoRA policy is its reference: reusing its log-probs is exact."""
    start: dict[str, Any] = {}
    if continued:
        first = train(
            small(max_steps=1),
            model=str(tiny_model_dir),
            training_file=pairs_file,
            output_dir=tmp_path / "first",
            models_dir=tmp_path,
        )
        start = {"from_checkpoint": str(first.output_dir)}
    runs = []
    for reuse in (True, False):
        monkeypatch.setattr(trainer_module, "REUSE_POLICY_AS_REFERENCE", reuse)
        out = tmp_path / f"reuse-{reuse}"
        train(
            small(batch_size=4, gradient_accumulation_steps=2, max_steps=3, n_evals=1, **start),
            model=str(tiny_model_dir),
            training_file=pairs_file,
            validation_file=eval_pairs_file,
            output_dir=out,
            models_dir=tmp_path,
        )
        runs.append(read_metrics(out))
    for with_reuse, without in zip(*runs, strict=True):
        for key in ("loss", "rewards/chosen", "rewards/margins", "grad_norm"):
            if key in without:
                assert with_reuse[key] == pytest.approx(without[key], rel=1e-5, abs=1e-6), key
