"""The runner with the real trainer in a child process: a short DPO job to completion, and a cancel."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from preftune.config import Settings
from preftune.runner.worker import Runner
from preftune.service import jobs as job_service
from preftune.store.db import Database


def _wait_for_event(
    db: Database, owner_id: str, job_id: str, event_type: str, timeout: float = 300.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as session:
            types = [e.type for e in job_service.list_events(session, owner_id, job_id, limit=1000).data]
        if event_type in types:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {event_type} event within {timeout}s; events so far: {types}")


def test_short_dpo_job_runs_to_completion_and_the_adapter_loads(
    db: Database, settings: Settings, owner_id: str, make_job: Any, tiny_model_dir: Path
) -> None:
    job_id = make_job(max_steps=4, n_checkpoints=2, dpo_beta=0.2, suffix="demo")
    outcome = Runner(settings, db=db).run_once()
    assert outcome is not None and outcome.kind == "completed"
    with db.session() as session:
        job = job_service.get_job(session, owner_id, job_id)
        assert job.status == "completed" and job.error_message is None
        assert (job.step, job.total_steps) == (4, 4)
        assert job.output_name == f"ft:{tiny_model_dir.name}:demo:{job_id}"
        assert job.latest_metrics is not None and "rewards/accuracies" in job.latest_metrics
        types = [e.type for e in job_service.list_events(session, owner_id, job_id).data]
        metrics = job_service.list_metrics(session, owner_id, job_id)
        checkpoints = job_service.list_checkpoints(session, owner_id, job_id, order="asc")
        adapter = job_service.artifact_path(session, owner_id, job_id, settings)
    assert types == [
        "JOB_PENDING",
        "JOB_QUEUED",
        "JOB_START",
        "TRAINING_START",
        "CHECKPOINT_SAVE",
        "CHECKPOINT_SAVE",
        "TRAINING_COMPLETE",
        "MODEL_REGISTERED",
        "JOB_COMPLETE",
    ]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all("loss" in m for m in metrics)
    assert [c.step for c in checkpoints] == [2, 4] and all(Path(c.path).is_dir() for c in checkpoints)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, adapter)
    assert any("lora_" in name for name, _ in model.named_parameters())


def test_cancel_stops_training_and_keeps_the_last_checkpoint(
    db: Database, settings: Settings, owner_id: str, make_job: Any
) -> None:
    # 400 steps available, a checkpoint every 2 steps: the cancel lands long before the end.
    job_id = make_job(n_epochs=50, max_steps=200, n_checkpoints=100)
    runner = Runner(settings, db=db)
    outcomes: list[Any] = []
    thread = threading.Thread(target=lambda: outcomes.append(runner.run_once()))
    thread.start()
    try:
        _wait_for_event(db, owner_id, job_id, "CHECKPOINT_SAVE")
        with db.session() as session:
            assert job_service.cancel_job(session, owner_id, job_id).status == "cancel_requested"
    finally:
        thread.join(timeout=300)
    assert not thread.is_alive() and outcomes[0].kind == "cancelled"
    with db.session() as session:
        job = job_service.get_job(session, owner_id, job_id)
        checkpoints = job_service.list_checkpoints(session, owner_id, job_id)
        events = job_service.list_events(session, owner_id, job_id, order="desc", limit=1).data
    assert job.status == "cancelled" and job.step < 200
    assert checkpoints and Path(checkpoints[0].path).is_dir()
    assert events[0].type == "JOB_CANCELLED" and f"step {checkpoints[0].step}" in events[0].message
    assert not (settings.jobs_dir / job_id / "adapter").exists()


@pytest.mark.slow
def test_a_job_with_validation_data_shows_its_eval_metrics_and_best_checkpoint(
    db: Database, settings: Settings, owner_id: str, make_job: Any
) -> None:
    from preftune.api.dialects.native.presenters import checkpoint_object, job_object

    # validation_split: 4 of the 16 pairs held out; a min_delta nothing beats makes step 2 the best.
    job_id = make_job(max_steps=4, validation_split=0.25, n_evals=2, early_stopping_min_delta=100.0)
    outcome = Runner(settings, db=db).run_once()
    assert outcome is not None and outcome.kind == "completed"
    with db.session() as session:
        job = job_service.get_job(session, owner_id, job_id)
        shown = job_object(job)
        checkpoints = job_service.list_checkpoints(session, owner_id, job_id, order="asc")
        best = job_service.artifact_path(session, owner_id, job_id, settings, artifact="best")
    assert shown.eval_metrics is not None and shown.eval_metrics["step"] == 4
    assert "preference_accuracy" in shown.eval_metrics and "rewards/accuracies" in shown.eval_metrics
    assert shown.best_checkpoint_step == 2
    assert [(c.step, checkpoint_object(c, job.best_step).best) for c in checkpoints] == [
        (2, True),
        (4, False),
    ]
    assert best.name == "step-2" and (best / "adapter_model.safetensors").is_file()
