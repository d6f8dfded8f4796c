"""A slow checkpoint upload does not stall the runner: with the blob store in a bucket (moto's S3
server), the upload of the first checkpoint is held at the S3 client (a botocore hook on the store's
own client delays its requests) while the real trainer goes on; the runner keeps forwarding metrics
and events meanwhile, records no checkpoint before the bucket has it, records them in step order, and
completes the job only after every upload is done."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import s3
from helpers.data import first_lines
from preftune.config import Settings
from preftune.runner.worker import Runner
from preftune.service import artifacts
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.service import keys as key_service
from preftune.store.blobs import open_blob_store
from preftune.store.db import Database
from preftune.store.s3 import S3BlobStore

HOLD_LIMIT_S = 120.0


def _setup(
    tmp_path: Path, endpoint: str, bucket: str, orca_path: Path, model: Path, **extra: Any
) -> tuple[Settings, Database, S3BlobStore, str, str]:
    settings = s3.s3_settings(
        tmp_path / "runner", endpoint, bucket,
        database_url=f"sqlite:///{tmp_path / 'shared.db'}", lease_seconds=10.0, heartbeat_seconds=0.5,
        **extra,
    )  # fmt: skip
    db = Database(settings.resolved_database_url)
    db.migrate()
    blobs = open_blob_store(settings)
    assert isinstance(blobs, S3BlobStore)
    with db.session() as session:
        owner = key_service.create_owner(session, "alice").id
        small = first_lines(orca_path, tmp_path / "orca-16.jsonl", 16)
        record = file_service.create_file(
            session, owner, blobs.stage_path(small), blobs=blobs, filename="orca.jsonl"
        )
        job_id = job_service.create_job(
            session, owner, model=str(model), training_file=record.id, settings=settings,
            params={"max_steps": 8, "n_checkpoints": 2, "batch_size": 2, "max_length": 96, "lora_r": 4},
        ).id  # fmt: skip
    return settings, db, blobs, owner, job_id


@pytest.mark.slow
def test_events_keep_flowing_while_a_checkpoint_uploads_slowly(
    tmp_path: Path, s3_server: str, s3_bucket: str, orca_path: Path, tiny_model_dir: Path
) -> None:
    settings, db, blobs, owner, job_id = _setup(tmp_path, s3_server, s3_bucket, orca_path, tiny_model_dir)

    # Hold every request for the first checkpoint's objects until the test has seen training go on.
    release = threading.Event()
    held: list[float] = []

    def hold(request: Any, **_: Any) -> None:
        if "/checkpoints/step-4/" in request.url and not release.is_set():
            held.append(time.monotonic())
            release.wait(HOLD_LIMIT_S)

    blobs.client.meta.events.register("before-send.s3.*", hold)

    def rows() -> tuple[list[int], list[int], list[str]]:
        with db.session() as session:
            metrics = [m["step"] for m in job_service.list_metrics(session, owner, job_id)]
            checkpoints = [c.step for c in job_service.list_checkpoints(session, owner, job_id, order="asc")]
            events = [e.type for e in job_service.list_events(session, owner, job_id, limit=1000).data]
        return metrics, checkpoints, events

    outcomes: list[Any] = []
    runner = Runner(settings, db=db, blobs=blobs)
    thread = threading.Thread(target=lambda: outcomes.append(runner.run_once()))
    thread.start()
    seen_while_held: tuple[list[int], list[int], list[str]] | None = None
    try:
        deadline = time.monotonic() + HOLD_LIMIT_S
        while time.monotonic() < deadline and seen_while_held is None:
            metrics, checkpoints, events = rows()
            if held and 8 in metrics and "TRAINING_COMPLETE" in events:
                seen_while_held = (metrics, checkpoints, events)
            time.sleep(0.1)
    finally:
        release.set()
        thread.join(HOLD_LIMIT_S)
    assert seen_while_held is not None, "metrics and events stopped while the checkpoint uploaded"
    metrics, checkpoints, events = seen_while_held
    # Steps past the checkpoint and the trainer's last event arrived while step 4 was still uploading;
    # neither checkpoint was announced yet (step 8 waits its turn behind step 4).
    assert metrics == [1, 2, 3, 4, 5, 6, 7, 8] and checkpoints == [] and "CHECKPOINT_SAVE" not in events
    assert "JOB_COMPLETE" not in events  # the job waits for its uploads

    assert outcomes and outcomes[0] is not None and outcomes[0].kind == "completed"
    metrics, checkpoints, events = rows()
    assert checkpoints == [4, 8] and events.count("CHECKPOINT_SAVE") == 2 and events[-1] == "JOB_COMPLETE"
    assert sorted(artifacts.remote_checkpoint_steps(blobs, job_id)) == [4, 8]
    with db.session() as session:
        made = {
            c.step: c.created_at for c in job_service.list_checkpoints(session, owner, job_id, order="asc")
        }
        job = job_service.get_job(session, owner, job_id)
    assert made[4] <= made[8] and job.status == "completed"
    db.dispose()


@pytest.mark.slow
def test_a_checkpoint_the_bucket_refuses_fails_the_attempt_and_records_nothing(
    tmp_path: Path, s3_server: str, s3_bucket: str, orca_path: Path, tiny_model_dir: Path
) -> None:
    settings, db, blobs, owner, job_id = _setup(
        tmp_path, s3_server, s3_bucket, orca_path, tiny_model_dir, s3_max_attempts=1, max_job_attempts=1
    )

    def refuse(request: Any, **_: Any) -> None:
        from botocore.exceptions import ConnectionClosedError

        if "/checkpoints/" in request.url:
            raise ConnectionClosedError(endpoint_url=request.url)

    blobs.client.meta.events.register("before-send.s3.*", refuse)
    outcome = Runner(settings, db=db, blobs=blobs).run_once()
    assert outcome is not None and outcome.kind == "error"
    with db.session() as session:
        job = job_service.get_job(session, owner, job_id)
        checkpoints = job_service.list_checkpoints(session, owner, job_id, order="asc")
    assert job.status == "error" and job.error_code == "storage_error"
    assert "could not upload a checkpoint" in (job.error_message or "")
    assert checkpoints == [] and artifacts.remote_checkpoint_steps(blobs, job_id) == {}
    db.dispose()
