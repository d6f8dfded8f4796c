"""Validation during training: a held-out split, the end-of-run evaluation, the best checkpoint and
early stopping, on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError, TrainingSpecError
from preftune.training.callbacks import TrainCallbacks
from preftune.training.trainer import train


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
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
        self.events.append((type, data))


def _evals(out: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["split"] == "eval"]


def test_validation_split_holds_out_the_same_examples_and_evaluates_at_the_end(
    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    reports = []
    for run in ("a", "b"):
        out = tmp_path / run
        result = train(
            small(validation_split=0.25),
            model=str(tiny_model_dir),
            training_file=pairs_file,
            output_dir=out,
            models_dir=tmp_path / "models",
        )
        assert result.status == "completed"
        reports.append(json.loads((out / "train_report.json").read_text()))
        evals = _evals(out)
        # n_evals=0, but a run with validation data still ends with one evaluation.
        assert [e["step"] for e in evals] == [2]
        assert 0.0 <= evals[0]["preference_accuracy"] <= 1.0
        assert 0.0 <= evals[0]["preference_accuracy_normalized"] <= 1.0
        # ...and writes eval.json: the final weights beside the base model, on the held-out pairs.
        held_out = json.loads((out / "eval.json").read_text())
        assert held_out["n_pairs"] == 4
        assert held_out["base"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert held_out["base"]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
        assert held_out["model"]["loss"] == pytest.approx(evals[0]["loss"], abs=1e-4)
        assert held_out["model"]["preference_accuracy"] == pytest.approx(evals[0]["preference_accuracy"])
        assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first, second = reports
    assert first["n_examples"] == 12 and first["validation"]["n_examples"] == 4
    assert first["validation"]["source"] == "validation_split"
    # Same seed, same held-out share: the evaluation (before any difference) is the same number.
    assert first["final_eval_metrics"]["loss"] == pytest.approx(
        second["final_eval_metrics"]["loss"], abs=1e-6
    )


def test_early_stopping_keeps_and_returns_the_best_checkpoint(
    tiny_model_dir: Path, pairs_file: Path, eval_pairs_file: Path, tmp_path: Path
) -> None:
    # A min_delta no loss can beat: the first evaluation is the best, the second one stops the run.
    out = tmp_path / "run"
    recorder = Recorder()
    result = train(
        small(max_steps=4, n_evals=4, early_stopping_patience=1, early_stopping_min_delta=100.0),
        model=str(tiny_model_dir),
        training_file=pairs_file,
        validation_file=eval_pairs_file,
        output_dir=out,
        models_dir=tmp_path / "models",
        callbacks=recorder,
    )
    assert result.status == "completed" and result.steps == 2 < result.total_steps == 4
    assert [e["step"] for e in _evals(out)] == [1, 2]
    types = [t for t, _ in recorder.events]
    assert "EARLY_STOP" in types and types[-1] == "TRAINING_COMPLETE"
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["step"] == 1 and best["path"] == "step-1"
    assert any(t == "CHECKPOINT_SAVE" and d.get("best") for t, d in recorder.events)
    report = json.loads((out / "train_report.json").read_text())
    assert report["early_stopped"] is True and report["best_checkpoint"]["step"] == 1
    # The final adapter is the best checkpoint's, not the weights after step 2.
    assert result.adapter_path is not None
    final = load_file(str(result.adapter_path / "adapter_model.safetensors"))
    best_weights = load_file(str(out / "checkpoints" / "step-1" / "adapter_model.safetensors"))
    assert final.keys() == best_weights.keys()
    assert all((final[k] == best_weights[k]).all() for k in final)


def test_validation_knobs_are_checked(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingSpecError) as spec_error:
        TrainingSpec.from_params({"early_stopping_patience": 2, "n_evals": 1})
    assert spec_error.value.param == "early_stopping_patience"
    with pytest.raises(InvalidRequestError) as both:
        train(
            small(validation_split=0.1),
            model=str(tiny_model_dir),
            training_file=pairs_file,
            validation_file=pairs_file,
            output_dir=tmp_path / "run",
            models_dir=tmp_path / "models",
        )
    assert both.value.param == "validation_split"
    with pytest.raises(InvalidRequestError) as nothing:
        train(
            small(n_evals=2, early_stopping_patience=1),
            model=str(tiny_model_dir),
            training_file=pairs_file,
            output_dir=tmp_path / "run2",
            models_dir=tmp_path / "models",
        )
    assert nothing.value.param == "validation_file"
