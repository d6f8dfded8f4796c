"""Database rows to native API objects; other dialects reuse `public_hyperparameters` and `ts`.

Secrets never pass through here: a job's hyperparameters go through
`TrainingSpec.public_dict()`, which reduces `wandb_api_key` to `wandb_api_key_set`.
"""

from __future__ import annotations

from typing import Any

from preftune.api.dialects.native import schemas
from preftune.contracts.resources import Resources
from preftune.contracts.spec import SECRET_FIELDS, TrainingSpec
from preftune.service.files import report_summary
from preftune.store import models


def ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def public_hyperparameters(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return TrainingSpec.model_validate(spec).public_dict()
    except ValueError:
        # A spec stored by an older version that no longer validates: still never show secrets.
        shown = {k: v for k, v in spec.items() if k not in SECRET_FIELDS}
        shown["wandb_api_key_set"] = bool(spec.get("wandb_api_key"))
        return shown


def file_object(row: models.File) -> schemas.FileObject:
    return schemas.FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=int(row.created_at),
        filename=row.filename,
        status=row.status,  # type: ignore[arg-type]
        status_details=row.status_details,
        name=row.name,
        sha256=row.sha256,
        format=row.format,
        n_examples=row.n_examples,
        report_summary=report_summary(row.report),
    )


def job_error(row: models.Job) -> schemas.JobError | None:
    if row.error_message is None:
        return None
    return schemas.JobError(message=row.error_message, code=row.error_code, param=row.error_param)


def job_object(row: models.Job) -> schemas.FineTuneJob:
    return schemas.FineTuneJob(
        id=row.id,
        model=row.model,
        training_file=row.training_file_id,
        validation_file=row.validation_file_id,
        status=row.status,  # type: ignore[arg-type]
        created_at=int(row.created_at),
        started_at=ts(row.started_at),
        finished_at=ts(row.finished_at),
        hyperparameters=public_hyperparameters(row.spec),
        progress=schemas.JobProgress(
            step=row.step or 0, total_steps=row.total_steps, epoch=row.epoch, eta_seconds=row.eta_seconds
        ),
        latest_metrics=row.latest_metrics,
        eval_metrics=row.latest_eval_metrics,
        best_checkpoint_step=row.best_step,
        output_name=row.output_name,
        error=job_error(row),
        attempts=row.attempts or 0,
        resources={**Resources().model_dump(), **(row.resources or {})},
    )


def event_object(row: models.JobEvent) -> schemas.JobEvent:
    return schemas.JobEvent(
        id=row.id,
        created_at=int(row.created_at),
        seq=row.seq,
        type=row.type,
        level=row.level,  # type: ignore[arg-type]
        message=row.message,
        data=row.data,
    )


def checkpoint_object(row: models.Checkpoint, best_step: int | None = None) -> schemas.Checkpoint:
    return schemas.Checkpoint(
        id=row.id,
        job_id=row.job_id,
        step=row.step,
        created_at=int(row.created_at),
        metrics=row.metrics,
        best=best_step is not None and row.step == best_step,
    )


def key_object(row: models.ApiKey) -> schemas.APIKey:
    return schemas.APIKey(
        id=row.id,
        name=row.name,
        owner_id=row.owner_id,
        prefix=row.prefix,
        is_admin=row.is_admin,
        created_at=int(row.created_at),
        last_used_at=ts(row.last_used_at),
        revoked_at=ts(row.revoked_at),
    )
