"""The runner's side of the service: atomic claims, leases, heartbeats, progress, retries, outcomes
and the fine-tuned model registry. No training here (see tests/runner for the real thing)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from preftune.config import Settings
from preftune.errors import ConflictError, ModelNotFoundError, NotFoundError
from preftune.service import deployments as deployment_service
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.service import models as model_service
from preftune.service import runs
from preftune.store.blobs import BlobStore
from preftune.store.db import Database
from preftune.store.models import Job


def _queue(db: Database, settings: Settings, owner: str, file_id: str, model: Path, **params: Any) -> str:
    with db.session() as session:
        return job_service.create_job(
            session, owner, model=str(model), training_file=file_id, settings=settings, params=params
        ).id


def _expire_lease(db: Database, job_id: str) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=time.time() - 1))
        session.commit()


def _end_backoff(db: Database, job_id: str) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(retry_after=time.time() - 1))
        session.commit()


def _types(db: Database, owner: str, job_id: str) -> list[str]:
    with db.session() as session:
        return [e.type for e in job_service.list_events(session, owner, job_id, limit=1000).data]


def test_concurrent_runners_claim_each_job_once(
    db: Database, settings: Settings, blobs: BlobStore, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    ids = {_queue(db, settings, alice.owner_id, orca_file_id, tiny_model_dir) for _ in range(4)}
    claimed: list[str] = []
    lock = threading.Lock()

    def runner(name: str) -> None:
        while True:
            with db.session() as session:
                got = runs.claim_job(session, name, settings, blobs)
            if got is None:
                return
            with lock:
                claimed.append(got.job_id)

    threads = [threading.Thread(target=runner, args=(f"r{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)


def test_claim_gives_the_runner_what_it_needs(
    db: Database, settings: Settings, blobs: BlobStore, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    job_id = _queue(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, dpo_beta=0.3)
    with db.session() as session:
        claimed = runs.claim_job(session, "r1", settings, blobs)
        assert claimed is not None and claimed.job_id == job_id and claimed.attempt == 1
        assert not claimed.restarted and claimed.spec["dpo_beta"] == 0.3
        assert claimed.training_file.is_file() and claimed.output_dir == settings.jobs_dir / job_id
        assert runs.claim_job(session, "r2", settings, blobs) is None
        job = job_service.get_job(session, alice.owner_id, job_id)
        assert job.status == "running" and job.started_at is not None and job.runner_id == "r1"
    assert _types(db, alice.owner_id, job_id)[-1] == "JOB_START"


def test_expired_lease_is_reclaimed_as_a_restart_and_the_old_runner_is_locked_out(
    db: Database, settings: Settings, blobs: BlobStore, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:

    job_id = _queue(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    with db.session() as session:
        first = runs.claim_job(session, "r1", settings, blobs)
        assert first is not None
        runs.record_step(session, job_id, first.claim_token, {"step": 1, "total_steps": 4, "loss": 0.69})
        runs.record_checkpoint(
            session, job_id, first.claim_token, 1, settings.jobs_dir / job_id / "checkpoints/step-1"
        )
        runs.record_step(session, job_id, first.claim_token, {"step": 2, "total_steps": 4, "loss": 0.6})
        assert runs.claim_job(session, "r2", settings, blobs) is None  # lease still valid
        _expire_lease(db, job_id)  # the runner died: no heartbeat renewed it
        second = runs.claim_job(session, "r2", settings, blobs)
        assert second is not None and second.job_id == job_id
        assert second.restarted and second.attempt == 2 and second.resume_step == 1
        # Step 2 will be trained again: its old metrics line is gone, step 1 stays.
        assert [m["step"] for m in job_service.list_metrics(session, alice.owner_id, job_id)] == [1]
        assert not runs.heartbeat(session, job_id, first.claim_token, 30).lease_held
        with pytest.raises(runs.LeaseLostError):
            runs.record_step(session, job_id, first.claim_token, {"step": 3})
        assert runs.heartbeat(session, job_id, second.claim_token, 30).lease_held
    assert _types(db, alice.owner_id, job_id)[-1] == "JOB_RESTARTED"


def test_progress_completion_and_model_registry(
    db: Database,
    settings: Settings,
    blobs: BlobStore,
    alice: Any,
    bob: Any,
    orca_file_id: str,
    tiny_model_dir: Path,
    small_orca: Path,
) -> None:
    job_id = _queue(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, suffix="demo")
    adapter = settings.jobs_dir / job_id / "adapter"
    adapter.mkdir(parents=True)
    with db.session() as session:
        claimed = runs.claim_job(session, "r1", settings, blobs)
        assert claimed is not None
        token = claimed.claim_token
        runs.record_step(
            session,
            job_id,
            token,
            {
                "step": 1,
                "total_steps": 2,
                "epoch": 0.5,
                "eta_seconds": 3.0,
                "loss": 0.7,
                "rewards/accuracies": 0.5,
            },
        )
        job = job_service.get_job(session, alice.owner_id, job_id)
        assert (job.step, job.total_steps, job.epoch, job.eta_seconds) == (1, 2, 0.5, 3.0)
        assert job.latest_metrics is not None and job.latest_metrics["loss"] == 0.7
        runs.record_checkpoint(
            session, job_id, token, 2, settings.jobs_dir / job_id / "checkpoints" / "step-2"
        )
        runs.complete_job(
            session,
            job_id,
            token,
            base_model_path=tiny_model_dir,
            adapter_path=adapter,
            model_path=None,
            merged_path=None,
            steps=2,
        )
        job = job_service.get_job(session, alice.owner_id, job_id)
        assert job.status == "completed" and job.output_name == f"ft:{tiny_model_dir.name}:demo:{job_id}"
        assert job_service.artifact_path(session, alice.owner_id, job_id, settings) == adapter
        assert [c.step for c in job_service.list_checkpoints(session, alice.owner_id, job_id)] == [2]
        resolved = model_service.resolve_for_owner(session, alice.owner_id, job.output_name)
        assert resolved.adapter_path == adapter and resolved.base_model_path == tiny_model_dir
        assert [m.name for m in model_service.list_for_owner(session, alice.owner_id)] == [job.output_name]
        assert model_service.list_for_owner(session, bob.owner_id) == []
        with pytest.raises(ModelNotFoundError):
            model_service.resolve_for_owner(session, bob.owner_id, job.output_name)
        with pytest.raises(ConflictError):
            job_service.cancel_job(session, alice.owner_id, job_id)
        # Training on from the fine-tuned model: its base model, starting from its adapter.
        follow_up = job_service.create_job(
            session, alice.owner_id, model=job.output_name, training_file=orca_file_id, settings=settings
        )
        assert follow_up.model == str(tiny_model_dir) and follow_up.from_checkpoint_path == str(adapter)
        bob_file = file_service.create_file(
            session, bob.owner_id, blobs.stage_path(small_orca), blobs=blobs, filename="o.jsonl"
        )
        with pytest.raises(ModelNotFoundError) as foreign:
            job_service.create_job(
                session, bob.owner_id, model=job.output_name, training_file=bob_file.id, settings=settings
            )
        assert foreign.value.param == "model"
    types = _types(db, alice.owner_id, job_id)
    assert types[-2:] == ["MODEL_REGISTERED", "JOB_COMPLETE"]


def test_failures_retry_then_end_in_error_with_the_cause(
    db: Database, settings: Settings, blobs: BlobStore, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    job_id = _queue(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    with db.session() as session:
        for attempt in range(1, settings.max_job_attempts + 1):
            _end_backoff(db, job_id)
            claimed = runs.claim_job(session, "r1", settings, blobs)
            assert claimed is not None and claimed.attempt == attempt
            job = runs.fail_job(
                session, job_id, claimed.claim_token, settings, message="CUDA exploded", user_error=False
            )
        assert job.status == "error" and job.error_message is not None
        assert (
            "CUDA exploded" in job.error_message
            and f"{settings.max_job_attempts} attempts" in job.error_message
        )
        assert runs.claim_job(session, "r1", settings, blobs) is None
    types = _types(db, alice.owner_id, job_id)
    assert types.count("JOB_RETRY") == settings.max_job_attempts - 1 and types[-1] == "JOB_ERROR"
    assert types.count("JOB_RESTARTED") == settings.max_job_attempts - 1


def test_a_failed_attempt_is_retried_after_a_backoff_that_doubles(
    db: Database, settings: Settings, blobs: BlobStore, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    """A full disk or a dead node rarely mends in a second: the retry waits, longer each time."""
    settings = settings.model_copy(update={"retry_backoff_seconds": 20.0, "max_job_attempts": 3})
    job_id = _queue(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    waits = []
    with db.session() as session:
        for _ in range(2):
            claimed = runs.claim_job(session, "r1", settings, blobs)
            assert claimed is not None
            before = time.time()
            job = runs.fail_job(
                session, job_id, claimed.claim_token, settings, message="disk full", user_error=False
            )
            assert job.status == "queued" and job.retry_after is not None
            waits.append(job.retry_after - before)
            # Queued, but no runner takes it before its time; then one does.
            assert runs.claim_job(session, "r1", settings, blobs) is None
            _end_backoff(db, job_id)
    assert waits[0] == pytest.approx(20.0, abs=1.0) and waits[1] == pytest.approx(40.0, abs=1.0)
    with db.session() as session:
        events = job_service.list_events(session, alice.owner_id, job_id, limit=1000).data
        retries = [(e.message, e.data or {}) for e in events if e.type == "JOB_RETRY"]
    assert [data["retry_in_seconds"] for _, data in retries] == [20.0, 40.0]
    assert "retried in 20 s" in retries[0][0]
    many = settings.model_copy(update={"retry_backoff_seconds": 60.0})
    assert runs.retry_backoff(many, 10) == runs.MAX_RETRY_BACKOFF_SECONDS


def test_user_errors_are_not_retried(
    db: Database, settings: Settings, blobs: BlobStore, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    job_id = _queue(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    with db.session() as session:
        claimed = runs.claim_job(session, "r1", settings, blobs)
        assert claimed is not None
        job = runs.fail_job(
            session,
            job_id,
            claimed.claim_token,
            settings,
            message="every example is longer than max_length",
            user_error=True,
            code="no_examples",
            param="max_length",
        )
        assert job.status == "user_error" and job.error_param == "max_length"
        assert runs.claim_job(session, "r1", settings, blobs) is None


def test_cancel_of_a_running_job_goes_through_the_runner(
    db: Database, settings: Settings, blobs: BlobStore, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    job_id = _queue(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    with db.session() as session:
        claimed = runs.claim_job(session, "r1", settings, blobs)
        assert claimed is not None
        assert not runs.heartbeat(session, job_id, claimed.claim_token, 30).cancel_requested
        assert job_service.cancel_job(session, alice.owner_id, job_id).status == "cancel_requested"
        assert job_service.cancel_job(session, alice.owner_id, job_id).status == "cancel_requested"
        assert runs.heartbeat(session, job_id, claimed.claim_token, 30).cancel_requested
        job = runs.cancel_finished(session, job_id, claimed.claim_token, last_checkpoint_step=None)
        assert job.status == "cancelled"
    assert _types(db, alice.owner_id, job_id)[-2:] == ["JOB_CANCEL_REQUESTED", "JOB_CANCELLED"]


def test_dead_runner_of_a_cancelled_job_ends_it_cancelled(
    db: Database, settings: Settings, blobs: BlobStore, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    job_id = _queue(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    with db.session() as session:
        assert runs.claim_job(session, "r1", settings, blobs) is not None
        job_service.cancel_job(session, alice.owner_id, job_id)
        _expire_lease(db, job_id)
        assert runs.claim_job(session, "r2", settings, blobs) is None
        assert job_service.get_job(session, alice.owner_id, job_id).status == "cancelled"


def test_deployments_belong_to_their_owner(db: Database, alice: Any, bob: Any) -> None:
    with db.session() as session:
        dep = deployment_service.create_deployment(
            session, alice.owner_id, "smollm2-135m-instruct", min_replicas=1
        )
        assert dep.status == "pending"
        assert [d.id for d in deployment_service.list_deployments(session, alice.owner_id)] == [dep.id]
        assert deployment_service.list_deployments(session, bob.owner_id) == []
        with pytest.raises(NotFoundError):
            deployment_service.get_deployment(session, bob.owner_id, dep.id)
        with pytest.raises(NotFoundError):
            deployment_service.delete_deployment(session, bob.owner_id, dep.id)
        assert (
            deployment_service.set_deployment_status(session, alice.owner_id, dep.id, "ready").status
            == "ready"
        )
        deployment_service.delete_deployment(session, alice.owner_id, dep.id)
        assert deployment_service.list_deployments(session, alice.owner_id) == []
