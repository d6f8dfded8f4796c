"""A runner killed mid-training (SIGKILL, runner and child together): the lease expires, another runner
resumes from the last checkpoint, `JOB_RESTARTED` is written, and the job completes without training
any step before that checkpoint twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.server import child_env, preftune_command
from preftune.config import Settings
from preftune.runner.worker import Runner
from preftune.service import jobs as job_service
from preftune.store.db import Database
from preftune.store.models import JobMetric


def _events(db: Database, owner_id: str, job_id: str) -> list[Any]:
    with db.session() as session:
        return job_service.list_events(session, owner_id, job_id, limit=1000).data


def _start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    env = child_env(
        settings.home,
        PREFTUNE_LEASE_SECONDS=str(settings.lease_seconds),
        PREFTUNE_HEARTBEAT_SECONDS=str(settings.heartbeat_seconds),
    )
    # A new session: the runner and its training child share a process group we can kill at once.
    return subprocess.Popen(
        preftune_command("worker", "--id", "doomed"),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_killed_runner_job_resumes_from_its_checkpoint_and_completes(
    db: Database, settings: Settings, owner_id: str, make_job: Any, tiny_model_dir: Path
) -> None:
    total = 12
    # 16 pairs, 2 a step: 8 steps an epoch; 2 epochs cut at 12 steps; checkpoints at steps 3, 6, 9 and 12.
    job_id = make_job(n_epochs=2, max_steps=total, n_checkpoints=4)
    worker = _start_worker(settings)
    try:
        deadline = time.monotonic() + 400
        while not any(e.type == "CHECKPOINT_SAVE" for e in _events(db, owner_id, job_id)):
            assert worker.poll() is None, "the worker exited on its own"
            assert time.monotonic() < deadline, "no checkpoint saved in time"
            time.sleep(0.05)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    killed_at = time.time()
    with db.session() as session:
        job = job_service.get_job(session, owner_id, job_id)
        assert job.status == "running" and job.runner_id == "doomed", "the job must be cut off mid-training"
        assert job.step < total

    # Another runner picks the job up once the dead runner's lease has expired.
    runner = Runner(settings, db=db, runner_id="rescuer")
    outcome = None
    deadline = time.monotonic() + settings.lease_seconds + 60
    while outcome is None:
        assert time.monotonic() < deadline, "the expired job was never reclaimed"
        outcome = runner.run_once()
        if outcome is None:
            time.sleep(0.2)
    assert outcome.kind == "completed" and outcome.job_id == job_id

    events = _events(db, owner_id, job_id)
    types = [e.type for e in events]
    assert types.count("JOB_RESTARTED") == 1 and types[-1] == "JOB_COMPLETE"
    restarted = events[types.index("JOB_RESTARTED")]
    resume_step = restarted.data["resume_step"]
    assert resume_step is not None and resume_step > 0 and resume_step % 3 == 0
    second_start = [e for e in events[types.index("JOB_RESTARTED") :] if e.type == "TRAINING_START"]
    assert second_start[0].data["start_step"] == resume_step

    # The trainer's log holds every step exactly once; steps up to the checkpoint were not trained again.
    lines = [json.loads(x) for x in (settings.jobs_dir / job_id / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("split", "train") == "train"] == list(range(1, total + 1))
    with db.session() as session:
        rows = session.query(JobMetric).filter(JobMetric.job_id == job_id, JobMetric.split == "train").all()
        assert sorted(r.step for r in rows) == list(range(1, total + 1))
        assert all(r.created_at < killed_at for r in rows if r.step <= resume_step)
        assert all(r.created_at > killed_at for r in rows if r.step > resume_step)
        job = job_service.get_job(session, owner_id, job_id)
        assert job.status == "completed" and job.attempts == 2
        adapter = job_service.artifact_path(session, owner_id, job_id, settings)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert any("lora_" in name for name, _ in model.named_parameters())
