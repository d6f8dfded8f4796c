"""The runner's side with the blob store in a bucket (moto's S3 server): machines that share only the
database and the bucket. A claim on a fresh machine fetches the training file and the job's latest
checkpoint; an API machine serves a checkpoint another machine wrote; a blob missing from the bucket
fails the attempt (retried), not the runner. No training here."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from sqlalchemy import update

from helpers import s3
from helpers.data import first_lines
from preftune.config import Settings
from preftune.service import artifacts, runs
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.service import keys as key_service
from preftune.store.blobs import BlobStore, open_blob_store
from preftune.store.db import Database
from preftune.store.models import Job


def _machine(tmp_path: Path, name: str, endpoint: str, bucket: str) -> tuple[Settings, BlobStore]:
    settings = s3.s3_settings(
        tmp_path / name,
        endpoint,
        bucket,
        database_url=f"sqlite:///{tmp_path / 'shared.db'}",
        lease_seconds=30,
    )
    return settings, open_blob_store(settings)


def _setup(
    tmp_path: Path, endpoint: str, bucket: str, orca_path: Path, model: Path
) -> tuple[Database, str, str]:
    api, api_blobs = _machine(tmp_path, "api", endpoint, bucket)
    db = Database(api.resolved_database_url)
    db.migrate()
    small = first_lines(orca_path, tmp_path / "orca-8.jsonl", 8)
    with db.session() as session:
        owner = key_service.create_owner(session, "alice").id
        record = file_service.create_file(
            session, owner, api_blobs.stage_path(small), blobs=api_blobs, filename="orca.jsonl"
        )
        job = job_service.create_job(
            session, owner, model=str(model), training_file=record.id, settings=api, params={"max_steps": 6}
        )
    return db, owner, job.id


def test_a_fresh_machine_resumes_from_the_buckets_checkpoint(
    tmp_path: Path, s3_server: str, s3_bucket: str, orca_path: Path, tiny_model_dir: Path
) -> None:
    db, owner, job_id = _setup(tmp_path, s3_server, s3_bucket, orca_path, tiny_model_dir)
    first, first_blobs = _machine(tmp_path, "runner-1", s3_server, s3_bucket)
    with db.session() as session:
        claimed = runs.claim_job(session, "runner-1", first, first_blobs)
    assert claimed is not None and claimed.job_id == job_id
    assert claimed.training_file.is_relative_to(tmp_path / "runner-1")  # fetched into its own cache
    assert claimed.training_file.read_bytes() == (tmp_path / "orca-8.jsonl").read_bytes()

    # The first runner writes a checkpoint, uploads it, records it, and dies.
    step3 = claimed.output_dir / "checkpoints" / "step-3"
    step3.mkdir(parents=True)
    (step3 / "trainer_state.pt").write_bytes(b"state at step 3")
    artifacts.publish_checkpoint(first_blobs, job_id, step3)
    with db.session() as session:
        runs.record_checkpoint(session, job_id, claimed.claim_token, 3, step3)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=time.time() - 1))
        session.commit()
    shutil.rmtree(tmp_path / "runner-1")  # and its disk with it (all "machines" share this test's disk)

    second, second_blobs = _machine(tmp_path, "runner-2", s3_server, s3_bucket)
    with db.session() as session:
        again = runs.claim_job(session, "runner-2", second, second_blobs)
    assert again is not None and again.restarted and again.resume_step == 3
    fetched = again.output_dir / "checkpoints" / "step-3" / "trainer_state.pt"
    assert again.output_dir.is_relative_to(tmp_path / "runner-2")
    assert fetched.read_bytes() == b"state at step 3"

    # An API machine that never saw the checkpoint serves it.
    api, api_blobs = _machine(tmp_path, "api", s3_server, s3_bucket)
    with db.session() as session:
        path = job_service.artifact_path(
            session, owner, job_id, api, artifact="checkpoint", step=3, blobs=api_blobs
        )
    assert (
        path.is_relative_to(tmp_path / "api")
        and (path / "trainer_state.pt").read_bytes() == b"state at step 3"
    )
    db.dispose()


def test_a_blob_missing_from_the_bucket_fails_the_attempt_not_the_runner(
    tmp_path: Path, s3_server: str, s3_bucket: str, orca_path: Path, tiny_model_dir: Path
) -> None:
    db, owner, job_id = _setup(tmp_path, s3_server, s3_bucket, orca_path, tiny_model_dir)
    for key in s3.list_keys(s3_server, s3_bucket, "pt/blobs/"):
        s3.client(s3_server).delete_object(Bucket=s3_bucket, Key=key)
    runner, runner_blobs = _machine(tmp_path, "runner", s3_server, s3_bucket)
    with db.session() as session:
        assert runs.claim_job(session, "runner", runner, runner_blobs) is None
        job = job_service.get_job(session, owner, job_id)
        assert job.status == "queued" and job.attempts == 1
        events = job_service.list_events(session, owner, job_id, limit=100).data
    retry = [e for e in events if e.type == "JOB_RETRY"]
    assert retry and "blob store" in retry[-1].message and s3_bucket in retry[-1].message
    db.dispose()


def test_a_claim_holds_the_base_model_in_the_cache_until_the_attempt_ends(
    tmp_path: Path, s3_server: str, s3_bucket: str, orca_path: Path, tiny_model_dir: Path
) -> None:
    from helpers.models import install_base_model
    from preftune.contracts.base_models import resolve_model

    api, api_blobs = _machine(tmp_path, "api", s3_server, s3_bucket)
    install_base_model(api.home, tiny_model_dir, "tiny-named")
    assert artifacts.publish_base_model(api_blobs, "tiny-named", api.models_dir / "tiny-named")
    db, _, job_id = _setup(tmp_path, s3_server, s3_bucket, orca_path, api.models_dir / "tiny-named")
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(model="tiny-named"))
        session.commit()

    runner, runner_blobs = _machine(tmp_path, "runner-1", s3_server, s3_bucket)
    with db.session() as session:
        claimed = runs.claim_job(session, "runner-1", runner, runner_blobs)
    assert claimed is not None and claimed.model_pin is not None and claimed.model_pin.held
    resolved = resolve_model("tiny-named", runner.models_dir)
    assert resolved.resolve() == claimed.model_pin.path and (resolved / "config.json").is_file()
    assert claimed.model_pin.path.is_relative_to(runner.model_cache_dir)
    claimed.release()
    assert not claimed.model_pin.held
    db.dispose()
