"""W&B tracking in offline mode: the run directory appears under the output dir with the logged metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from preftune.contracts.spec import TrainingSpec
from preftune.training.callbacks import TRAINING_COMPLETE, TRAINING_START
from preftune.training.tracking import RUN_ID_FILE, WandbTracker, wandb_callbacks, wandb_keys

SECRET = "sk-test-" + "0123456789abcdef" * 2


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    wandb_dir = tmp_path / "wandb-default"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DISABLE_STATS", "true")
    return wandb_dir


def read_run(run_file: Path) -> list[dict[str, Any]]:
    """The records of an offline run, decoded by W&B's own reader (`wandb leet inspect --json`)."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(run_file)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def spec_with_key(**params: Any) -> TrainingSpec:
    return TrainingSpec.from_params({"wandb_api_key": SECRET, **params})


def test_no_key_no_tracker(tmp_path: Path) -> None:
    assert wandb_callbacks(TrainingSpec(), output_dir=tmp_path) is None


def test_wandb_keys_follow_trl_names() -> None:
    line = {
        "step": 3,
        "total_steps": 10,
        "epoch": 0.3,
        "eta_seconds": 12.0,
        "loss": 0.69,
        "rewards/accuracies": 0.5,
        "learning_rate": 5e-5,
        "note": "text",
        "flag": True,
        "bad": float("nan"),
    }
    assert wandb_keys(line) == {
        "train/epoch": 0.3,
        "train/loss": 0.69,
        "train/rewards/accuracies": 0.5,
        "train/learning_rate": 5e-5,
    }
    assert wandb_keys({"split": "eval", "step": 3, "loss": 0.6}) == {"eval/loss": 0.6}


def test_offline_run_holds_metrics_and_config_without_the_key(offline_wandb: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    tracker = wandb_callbacks(
        spec_with_key(wandb_project="proj", dpo_beta=0.2), output_dir=out, run_name="ftjob-abc"
    )
    assert isinstance(tracker, WandbTracker)
    tracker.on_event(TRAINING_START, "training started", {})
    for step in (1, 2, 3):
        tracker.on_step(
            {
                "step": step,
                "total_steps": 3,
                "epoch": step / 3,
                "loss": 1.0 / step,
                "rewards/margins": 0.1 * step,
            }
        )
    tracker.on_step({"step": 3, "split": "eval", "loss": 0.25, "rewards/accuracies": 0.75})
    tracker.on_event(TRAINING_COMPLETE, "done", {})
    assert not tracker.active

    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "the run lives in the job's output dir"
    run_id = (out / RUN_ID_FILE).read_text().strip()
    run_file = runs[0] / f"run-{run_id}.wandb"
    assert run_file.is_file()
    records = read_run(run_file)

    run = next(r["run"] for r in records if r.get("type") == "run")
    assert run["project"] == "proj" and run["display_name"] == "ftjob-abc" and run["run_id"] == run_id
    config = run["config"]["update"]
    assert config["dpo_beta"] == 0.2 and config["wandb_api_key_set"] is True
    assert "wandb_api_key" not in config

    history = {
        r["history"]["step"]["num"]: r["history"]["item"] for r in records if r.get("type") == "history"
    }
    assert sorted(history) == [1, 2, 3]
    assert history[2]["train/loss"] == pytest.approx(0.5)
    assert history[3]["train/rewards/margins"] == pytest.approx(0.3)
    assert history[3]["eval/rewards/accuracies"] == pytest.approx(0.75)

    # The key is a credential only: nowhere on disk.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_resume_continues_the_same_run(offline_wandb: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    spec = spec_with_key(wandb_name="my-run")
    first = WandbTracker(spec, output_dir=out)
    first.on_step({"step": 1, "loss": 0.7})
    first.finish()
    second = WandbTracker(spec, output_dir=out)
    second.on_step({"step": 2, "loss": 0.6})
    second.finish()
    run_id = (out / RUN_ID_FILE).read_text().strip()
    run_files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 2
    assert {f.name for f in run_files} == {f"run-{run_id}.wandb"}
    steps = sorted(
        r["history"]["step"]["num"] for f in run_files for r in read_run(f) if r.get("type") == "history"
    )
    assert steps == [1, 2]


def test_wandb_failure_does_not_fail_training(
    offline_wandb: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the output directory should be")
    tracker = WandbTracker(spec_with_key(), output_dir=blocked)
    tracker.on_step({"step": 1, "loss": 0.7})
    tracker.on_step({"step": 2, "loss": 0.6})
    assert not tracker.active
    assert "tracking is off" in caplog.text
