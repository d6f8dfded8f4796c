"""Database rows to Together's objects: files, jobs (`ft-` ids, Together's states), events
(lower-case types, ISO times), checkpoints (`ft-…:STEP` paths) and metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from preftune.api.dialects.native.presenters import public_hyperparameters
from preftune.api.dialects.states import together_status
from preftune.api.dialects.together import schemas as tg
from preftune.contracts.spec import TrainingSpec
from preftune.store import models

# preftune's event types in Together's words (`together.types.FinetuneEventType`).
EVENT_TYPES: dict[str, str] = {
    "JOB_PENDING": "job_pending",
    "JOB_QUEUED": "job_pending",
    "JOB_START": "job_start",
    "JOB_RESTARTED": "job_restarted",
    "JOB_RETRY": "job_restarted",
    "TRAINING_START": "training_start",
    "CHECKPOINT_SAVE": "checkpoint_save",
    "EPOCH_COMPLETE": "epoch_complete",
    "EVAL": "eval_complete",
    "TRAINING_COMPLETE": "training_complete",
    "MODEL_REGISTERED": "model_upload_complete",
    "JOB_COMPLETE": "job_complete",
    "JOB_ERROR": "job_error",
    "JOB_USER_ERROR": "job_error",
    "JOB_CANCEL_REQUESTED": "cancel_requested",
    "JOB_CANCELLED": "job_stopped",
}
LEVELS = {"info": "info", "warn": "warning", "error": "error"}


def iso(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC).isoformat().replace("+00:00", "Z")


def file_object(row: models.File) -> tg.TogetherFile:
    ok = row.status == "processed"
    summary = (row.report or {}) if not ok else {}
    error = row.status_details if not ok else None
    return tg.TogetherFile(
        id=row.id,
        bytes=row.bytes,
        created_at=int(row.created_at),
        filename=row.filename,
        processing_status="COMPLETED" if ok else "FAILED",
        validation_report=tg.ValidationReport(
            valid=ok,
            dataset_format=(row.format or None) if ok else summary.get("format"),
            error=error,
            error_type="INVALID_FORMAT" if not ok else None,
            file_id=row.id,
            nlines=row.n_examples,
        ),
        LineCount=row.n_examples,
    )


def _spec(row: models.Job) -> dict[str, Any]:
    spec = public_hyperparameters(row.spec)
    defaults = {name: field.default for name, field in TrainingSpec.model_fields.items()}
    return {**defaults, **spec}


def training_method(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("training_method") == "sft":
        return {"method": "sft", "train_on_inputs": spec.get("train_on_inputs", "auto")}
    return {
        "method": "dpo",
        "dpo_beta": spec.get("dpo_beta"),
        "dpo_normalize_logratios_by_length": bool(spec.get("dpo_normalize_logratios_by_length")),
        "dpo_reference_free": float(spec.get("simpo_gamma") or 0) > 0,
        "rpo_alpha": spec.get("rpo_alpha"),
        "simpo_gamma": spec.get("simpo_gamma"),
    }


def training_type(spec: dict[str, Any]) -> dict[str, Any]:
    if not spec.get("lora", True):
        return {"type": "Full"}
    return {
        "type": "Lora",
        "lora_r": spec.get("lora_r"),
        "lora_alpha": spec.get("lora_alpha"),
        "lora_dropout": spec.get("lora_dropout"),
        "lora_trainable_modules": spec.get("lora_trainable_modules"),
    }


def _from_checkpoint(spec: dict[str, Any]) -> str | None:
    ref = spec.get("from_checkpoint")
    if not ref:
        return None
    job, sep, step = str(ref).partition(":")
    return tg.public_job_id(job) + sep + step


def job_object(row: models.Job, events: list[tg.TogetherEvent] | None = None) -> tg.TogetherJob:
    spec = _spec(row)
    stamps = [t for t in (row.created_at, row.started_at, row.heartbeat_at, row.finished_at) if t is not None]
    eta = row.eta_seconds
    scheduler_args: dict[str, Any] = {"min_lr_ratio": spec.get("min_lr_ratio")}
    if spec.get("lr_scheduler_type") == "cosine":
        scheduler_args["num_cycles"] = 0.5
    completed = row.status == "completed"
    output = row.output_name if completed else None
    return tg.TogetherJob(
        id=tg.public_job_id(row.id),
        status=together_status(row.status),
        user_id=row.owner_id,
        owner_address=row.owner_id,
        created_at=iso(row.created_at) or "",
        updated_at=iso(max(stamps)) or "",
        started_at=iso(row.started_at),
        model=row.model,
        model_output_name=output,
        model_output_path=output,
        adapter_output_name=output if completed and spec.get("lora", True) else None,
        training_file=row.training_file_id,
        validation_file=row.validation_file_id,
        training_method=training_method(spec),
        training_type=training_type(spec),
        lr_scheduler={
            "lr_scheduler_type": spec.get("lr_scheduler_type"),
            "lr_scheduler_args": scheduler_args,
        },
        n_epochs=int(spec["n_epochs"]),
        n_checkpoints=int(spec["n_checkpoints"]),
        n_evals=int(spec["n_evals"]),
        batch_size=int(spec["batch_size"]),
        learning_rate=float(spec["learning_rate"]),
        warmup_ratio=float(spec["warmup_ratio"]),
        max_grad_norm=float(spec["max_grad_norm"]),
        weight_decay=float(spec["weight_decay"]),
        max_seq_length=int(spec["max_length"]),
        random_seed=int(spec["seed"]),
        suffix=spec.get("suffix"),
        from_checkpoint=_from_checkpoint(spec),
        wandb_project_name=spec.get("wandb_project"),
        wandb_name=spec.get("wandb_name"),
        train_on_inputs=spec.get("train_on_inputs") if spec.get("training_method") == "sft" else None,
        total_steps=row.total_steps,
        steps_completed=row.step or 0,
        epochs_completed=int(row.epoch or 0),
        progress=tg.TogetherProgress(
            estimate_available=bool(eta) and row.status == "running", seconds_remaining=int(eta or 0)
        ),
        events=events or [],
        error=row.error_message,
    )


def event_object(row: models.JobEvent, job_id: str) -> tg.TogetherEvent:
    data = row.data or {}
    step = data.get("step")
    kind = EVENT_TYPES.get(row.type, row.type.lower())
    return tg.TogetherEvent(
        created_at=iso(row.created_at) or "",
        message=row.message,
        type=kind,
        level=LEVELS.get(row.level, "info"),  # type: ignore[arg-type]
        step=step if isinstance(step, int) else None,
        total_steps=data.get("total_steps") if isinstance(data.get("total_steps"), int) else None,
        checkpoint_path=f"{tg.public_job_id(job_id)}:{step}" if kind == "checkpoint_save" and step else None,
        hash=f"ftevent-{row.seq}",
    )


def checkpoints(rows: list[models.Checkpoint], job: models.Job) -> list[tg.TogetherCheckpoint]:
    """Newest first, the final model (once completed) at the top, as Together lists them."""
    public = tg.public_job_id(job.id)
    kind = "adapter" if _spec(job).get("lora", True) else "model"
    items = [
        tg.TogetherCheckpoint(
            checkpoint_type=f"Intermediate checkpoint at step {row.step}",
            checkpoint=kind,  # type: ignore[arg-type]
            created_at=iso(row.created_at) or "",
            path=f"{public}:{row.step}",
            step=row.step,
        )
        for row in sorted(rows, key=lambda r: r.step, reverse=True)
    ]
    if job.status == "completed":
        final = tg.TogetherCheckpoint(
            checkpoint_type="Final",
            checkpoint=kind,  # type: ignore[arg-type]
            created_at=iso(job.finished_at) or "",
            path=public,
            step=job.step or 0,
        )
        items.insert(0, final)
    return items


def metrics(rows: list[dict[str, Any]]) -> tg.TogetherMetrics:
    """Each step's numbers, as Together's `metrics` (numbers only; `global_step` is the step)."""
    out = []
    for row in rows:
        point = {
            k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if "step" in point:
            point["global_step"] = point["step"]
        out.append(point)
    return tg.TogetherMetrics(metrics=out)
