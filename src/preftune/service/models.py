"""The fine-tuned model registry: names, and what inference needs to load a model for an owner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from preftune.errors import ModelNotFoundError
from preftune.store.models import FineTunedModel, Job

FT_PREFIX = "ft:"


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: the base model directory plus, for fine-tuned models, the adapter or weights.

    `adapter_path` is a PEFT adapter to apply on `base_model_path`; `merged_path` is a full model
    (a merged LoRA or a full fine-tune) to load instead of the base.
    """

    name: str
    base_model_path: Path
    adapter_path: Path | None = None
    merged_path: Path | None = None
    job_id: str | None = None
    created_at: float | None = None
    # The base model's name as the job gave it (a runner's `base_model_path` is a path on its machine).
    base_model: str | None = None


def base_model_label(model: str) -> str:
    """The base model's short name inside `ft:<base>:<suffix>:<job>`: a directory path becomes its last part."""
    label = model.rstrip("/").rsplit("/", 1)[-1] if "/" in model and Path(model).is_absolute() else model
    return label.replace(":", "-")


def model_name_for(job: Job) -> str:
    suffix = (job.spec or {}).get("suffix") or ""
    return f"{FT_PREFIX}{base_model_label(job.model)}:{suffix}:{job.id}"


def _resolved(record: FineTunedModel) -> ResolvedModel:
    merged = record.merged_path or (record.model_path if record.adapter_path is None else None)
    return ResolvedModel(
        name=record.name,
        base_model_path=Path(record.base_model_path),
        adapter_path=Path(record.adapter_path) if record.adapter_path else None,
        merged_path=Path(merged) if merged else None,
        job_id=record.job_id,
        created_at=record.created_at,
        base_model=record.base_model,
    )


def resolve_for_owner(
    session: Session, owner_id: str, name: str, *, models_dir: Path | None = None
) -> ResolvedModel:
    """A fine-tuned model of `owner_id` by name (`ft:…`, or its job id), or — given `models_dir` — a
    base model name. Another owner's model is `ModelNotFoundError`, like a missing one."""
    record = session.scalar(
        select(FineTunedModel).where(
            FineTunedModel.owner_id == owner_id,
            (FineTunedModel.name == name) | (FineTunedModel.job_id == name),
        )
    )
    if record is not None:
        return _resolved(record)
    if not name.startswith(FT_PREFIX) and models_dir is not None:
        from preftune.contracts.base_models import resolve_model

        return ResolvedModel(name=name, base_model_path=resolve_model(name, models_dir))
    raise ModelNotFoundError(
        f"model {name!r} not found: list your fine-tuned models with GET /v1/models",
        param="model",
        code="model_not_found",
    )


def list_for_owner(session: Session, owner_id: str) -> list[ResolvedModel]:
    """The owner's fine-tuned models, newest first."""
    rows = session.scalars(
        select(FineTunedModel)
        .where(FineTunedModel.owner_id == owner_id)
        .order_by(FineTunedModel.created_at.desc(), FineTunedModel.id.desc())
    )
    return [_resolved(row) for row in rows]
