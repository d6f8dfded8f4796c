"""Database rows to API objects: the one place that decides what a response shows.

Secrets never pass through here: a job's hyperparameters go through
`TrainingSpec.public_dict()`, which reduces `wandb_api_key` to `wandb_api_key_set`.
"""

from __future__ import annotations

from typing import Any

from preftune.api import schemas
from preftune.api.openai_schemas import (
    NATIVE_TO_OPENAI_STATUS,
    CheckpointMetrics,
    OpenAICheckpoint,
    OpenAIFineTuningJob,
    OpenAIJobError,
    OpenAIJobEvent,
    openai_hyperparameters,
)
from preftune.contracts.spec import SECRET_FIELDS, TrainingSpec
from preftune.service.files import report_summary
from preftune.store import models


def _ts(value: float | None) -> int | None:
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
        started_at=_ts(row.started_at),
        finished_at=_ts(row.finished_at),
        hyperparameters=public_hyperparameters(row.spec),
        progress=schemas.JobProgress(
            step=row.step or 0, total_steps=row.total_steps, epoch=row.epoch, eta_seconds=row.eta_seconds
        ),
        latest_metrics=row.latest_metrics,
        output_name=row.output_name,
        error=job_error(row),
        attempts=row.attempts or 0,
        resources={"processes_per_node": 1, "nodes": 1, **(row.resources or {})},
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


def checkpoint_object(row: models.Checkpoint) -> schemas.Checkpoint:
    return schemas.Checkpoint(
        id=row.id, job_id=row.job_id, step=row.step, created_at=int(row.created_at), metrics=row.metrics
    )


def key_object(row: models.ApiKey) -> schemas.APIKey:
    return schemas.APIKey(
        id=row.id,
        name=row.name,
        owner_id=row.owner_id,
        prefix=row.prefix,
        is_admin=row.is_admin,
        created_at=int(row.created_at),
        last_used_at=_ts(row.last_used_at),
        revoked_at=_ts(row.revoked_at),
    )


# --- OpenAI-compatible ------------------------------------------------------------------------
def openai_job(row: models.Job) -> OpenAIFineTuningJob:
    spec = public_hyperparameters(row.spec)
    basic, method = openai_hyperparameters(spec)
    error = None
    if row.error_message is not None:
        error = OpenAIJobError(
            code=row.error_code or "error", message=row.error_message, param=row.error_param
        )
    eta = row.eta_seconds
    estimated = int(row.heartbeat_at + eta) if row.status == "running" and eta and row.heartbeat_at else None
    return OpenAIFineTuningJob(
        id=row.id,
        created_at=int(row.created_at),
        error=error,
        fine_tuned_model=row.output_name if row.status == "completed" else None,
        finished_at=_ts(row.finished_at),
        hyperparameters=basic,
        model=row.model,
        organization_id=row.owner_id,
        seed=int(spec.get("seed", 0)),
        status=NATIVE_TO_OPENAI_STATUS.get(row.status, "running"),
        training_file=row.training_file_id,
        validation_file=row.validation_file_id,
        estimated_finish=estimated,
        method=method,
    )


def openai_event(row: models.JobEvent) -> OpenAIJobEvent:
    return OpenAIJobEvent(
        id=row.id,
        created_at=int(row.created_at),
        level=row.level,  # type: ignore[arg-type]
        message=row.message,
        data={"type": row.type, **(row.data or {})},
        type="message",
    )


def openai_metric_event(row: models.JobMetric) -> OpenAIJobEvent:
    data = row.data
    loss = data.get("loss")
    summary = f"Step {row.step}" + (f"/{data['total_steps']}" if data.get("total_steps") else "")
    if loss is not None:
        summary += f": training loss={loss:.4f}"
    if data.get("rewards/accuracies") is not None:
        summary += f", reward accuracy={data['rewards/accuracies']:.3f}"
    return OpenAIJobEvent(
        id=f"ftmetric-{row.id}",
        created_at=int(row.created_at),
        message=summary,
        data={"step": row.step, "train_loss": loss, **data},
        type="metrics",
    )


def openai_checkpoint(row: models.Checkpoint, job: models.Job) -> OpenAICheckpoint:
    metrics = dict(row.metrics or {})
    loss = metrics.get("loss")
    base = job.output_name or f"ft:{job.model}::{job.id}"
    return OpenAICheckpoint(
        id=row.id,
        created_at=int(row.created_at),
        fine_tuned_model_checkpoint=f"{base}:ckpt-step-{row.step}",
        fine_tuning_job_id=job.id,
        metrics=CheckpointMetrics.model_validate({**metrics, "step": float(row.step), "train_loss": loss}),
        step_number=row.step,
    )
