"""A job with `resources.launcher: ray` trains as Ray Train workers (a local Ray of 2 CPU workers,
started for the attempt): rank 0's events and metrics reach the job through the runner as a single
process's do, and the job completes with its adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from preftune.config import Settings
from preftune.runner.worker import Runner
from preftune.service import jobs as job_service
from preftune.store.db import Database

pytestmark = pytest.mark.slow  # starts a local Ray cluster for the attempt
pytest.importorskip("ray", reason="the ray extra (ray[train]) is not installed")


def _events(db: Database, owner_id: str, job_id: str) -> list[Any]:
    with db.session() as session:
        return job_service.list_events(session, owner_id, job_id, limit=1000).data


def test_a_job_on_the_ray_launcher_trains_on_ray_workers(
    db: Database,
    settings: Settings,
    owner_id: str,
    orca_file_id: str,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # never a cluster the caller happens to be on
    monkeypatch.setenv("RAY_DISABLE_USAGE_STATS", "1")
    with db.session() as session:
        job_id = job_service.create_job(
            session,
            owner_id,
            model=str(tiny_model_dir),
            training_file=orca_file_id,
            settings=settings,
            params={"batch_size": 2, "max_length": 48, "max_steps": 4, "n_checkpoints": 2},
            resources={"processes_per_node": 2, "launcher": "ray"},
        ).id
    outcome = Runner(settings, db=db, runner_id="r").run_once()
    assert outcome is not None
    log = (settings.jobs_dir / job_id / "train.log").read_text()
    assert outcome.kind == "completed", log[-4000:]

    types = [e.type for e in _events(db, owner_id, job_id)]
    assert types.count("CHECKPOINT_SAVE") == 2 and types[-1] == "JOB_COMPLETE", types
    start = next(e.data for e in _events(db, owner_id, job_id) if e.type == "TRAINING_START")
    assert start["world_size"] == 2
    out = settings.jobs_dir / job_id
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"] == [1, 2, 3, 4]
    assert json.loads((out / "train_report.json").read_text())["world_size"] == 2
    with db.session() as session:
        job = job_service.get_job(session, owner_id, job_id)
        assert job.status == "completed" and job.attempts == 1
        assert job.resources["launcher"] == "ray"
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert os.environ.get("RAY_ADDRESS") is None
