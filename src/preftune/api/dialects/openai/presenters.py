"""Database rows to OpenAI's objects (fine-tuning jobs, events, checkpoints)."""

from __future__ import annotations

from preftune.api.dialects.native.presenters import public_hyperparameters, ts
from preftune.api.dialects.openai.schemas import (
    CheckpointMetrics,
    OpenAICheckpoint,
    OpenAIFineTuningJob,
    OpenAIJobError,
    OpenAIJobEvent,
    openai_hyperparameters,
)
from preftune.api.dialects.states import openai_status
from preftune.store import models


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
        finished_at=ts(row.finished_at),
        hyperparameters=basic,
        model=row.model,
        organization_id=row.owner_id,
        seed=int(spec.get("seed", 0)),
        status=openai_status(row.status),
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
