"""A user error found while training (the model directory vanished) ends the job in `user_error`
with the parameter named, after one attempt: it is not retried."""

from __future__ import annotations

import shutil
from pathlib import Path

from preftune.config import Settings
from preftune.runner.worker import Runner
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.store.db import Database


def test_model_gone_at_training_time_is_a_user_error_without_retry(
    db: Database, settings: Settings, owner_id: str, orca_file_id: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "doomed-model"
    shutil.copytree(tiny_model_dir, model)
    with db.session() as session:
        job_id = job_service.create_job(
            session,
            owner_id,
            model=str(model),
            training_file=orca_file_id,
            settings=settings,
            params={"max_steps": 2, "batch_size": 2},
        ).id
    shutil.rmtree(model)
    outcome = Runner(settings, db=db).run_once()
    assert outcome is not None and outcome.kind == "user_error"
    with db.session() as session:
        job = job_service.get_job(session, owner_id, job_id)
        types = [e.type for e in job_service.list_events(session, owner_id, job_id).data]
        assert job.status == "user_error" and job.attempts == 1 and job.error_param == "model"
        assert job.error_message is not None and "not found" in job.error_message
        assert "JOB_RETRY" not in types and types[-1] == "JOB_USER_ERROR"
        # The file is free again once the job has ended.
        assert file_service.get_file(session, owner_id, orca_file_id).status == "processed"
    assert Runner(settings, db=db).run_once() is None
    # The child's traceback is in the job's log for whoever runs the server.
    log = (settings.jobs_dir / job_id / "train.log").read_text()
    assert "ModelNotFoundError" in log
