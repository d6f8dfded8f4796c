"""Restarting the service loses nothing: files, jobs, events, keys and queued work survive."""

from __future__ import annotations

from pathlib import Path

from preftune.config import Settings
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.service import keys as key_service
from preftune.service import runs
from preftune.service.bootstrap import bootstrap


def test_everything_survives_a_restart(settings: Settings, small_orca: Path, tiny_model_dir: Path) -> None:
    db, blobs, key = bootstrap(settings)
    assert key is not None
    with db.session() as session:
        owner = key_service.authenticate(session, key).owner_id
        upload = file_service.create_file(
            session, owner, blobs.stage_path(small_orca), blobs=blobs, filename="o.jsonl", name="orca"
        )
        queued = job_service.create_job(
            session,
            owner,
            model=str(tiny_model_dir),
            training_file=upload.id,
            settings=settings,
            params={"dpo_beta": 0.25},
            idempotency_key="create-1",
        )
        cancelled = job_service.create_job(
            session, owner, model=str(tiny_model_dir), training_file=upload.id, settings=settings
        )
        job_service.cancel_job(session, owner, cancelled.id)
        events_before = [(e.seq, e.type) for e in job_service.list_events(session, owner, queued.id).data]
    db.dispose()

    # A new process: same home, same database.
    db, blobs, key_again = bootstrap(settings)
    assert key_again is None  # the local admin key is kept
    with db.session() as session:
        assert key_service.authenticate(session, key).owner_id == owner
        again = file_service.get_file(session, owner, "orca")
        assert (again.id, again.status, again.n_examples) == (upload.id, "processed", 12)
        assert (
            file_service.content_path(session, owner, upload.id, blobs).read_bytes()
            == small_orca.read_bytes()
        )
        assert [j.id for j in job_service.list_jobs(session, owner).data] == [cancelled.id, queued.id]
        assert job_service.get_job(session, owner, cancelled.id).status == "cancelled"
        assert [
            (e.seq, e.type) for e in job_service.list_events(session, owner, queued.id).data
        ] == events_before
        # The same create request after the restart is still recognised.
        same = job_service.create_job(
            session,
            owner,
            model=str(tiny_model_dir),
            training_file=upload.id,
            settings=settings,
            params={"dpo_beta": 0.25},
            idempotency_key="create-1",
        )
        assert same.id == queued.id
        # Queued work is still there for a runner.
        claimed = runs.claim_job(session, "after-restart", settings, blobs)
        assert claimed is not None and claimed.job_id == queued.id and claimed.spec["dpo_beta"] == 0.25
    db.dispose()
