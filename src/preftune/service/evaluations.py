"""Evaluations: a model or adapter judged on a held-out preference file, run by a runner.

`create_evaluation` checks the file and the model for the owner and resolves the model to
directories; a runner claims queued evaluations (`claim_evaluation`), reports progress and
finishes them with the figures of `preftune.training.evaluation` (`complete_evaluation`) or an
error (`fail_evaluation`). Another owner's evaluation is not found, like a missing one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from preftune.config import Settings
from preftune.errors import DataValidationError, InvalidRequestError, NotFoundError
from preftune.service.common import Page, check_limit, new_id, now
from preftune.service.files import file_blob_path, get_file
from preftune.service.models import resolve_for_owner
from preftune.store.blobs import BlobStore
from preftune.store.models import Evaluation

STATUSES = ("queued", "running", "completed", "error")
DEFAULT_PARAMS: dict[str, Any] = {"beta": 0.1, "max_length": 1024, "batch_size": 8}


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    out = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
    unknown = set(out) - set(DEFAULT_PARAMS)
    if unknown:
        raise InvalidRequestError(
            f"unknown evaluation parameter {sorted(unknown)[0]!r}", param=sorted(unknown)[0]
        )
    if not (isinstance(out["beta"], int | float) and 0 < float(out["beta"]) <= 10):
        raise InvalidRequestError(f"beta must be in (0, 10] (got {out['beta']!r})", param="beta")
    for name, low, high in (("max_length", 16, 131072), ("batch_size", 1, 4096)):
        value = out[name]
        if not (isinstance(value, int) and low <= value <= high):
            raise InvalidRequestError(
                f"{name} must be an integer in [{low}, {high}] (got {value!r})", param=name
            )
    out["beta"] = float(out["beta"])
    return out


def create_evaluation(
    session: Session,
    owner_id: str,
    *,
    model: str,
    file: str,
    settings: Settings,
    base: str | None = None,
    params: dict[str, Any] | None = None,
) -> Evaluation:
    """Queue an evaluation of `model` (a fine-tuned model of the owner, or a base model) on `file`
    (a processed preference file of the owner); `base` overrides the model's base model."""
    checked = _params(params)
    record = get_file(session, owner_id, file, param="file")
    if record.status != "processed" or record.format != "preference":
        raise DataValidationError(
            f"file {record.id} must be processed preference pairs to evaluate on "
            f"(it is {record.status}, {record.format or 'unknown format'})",
            param="file",
            code="invalid_file",
        )
    resolved = resolve_for_owner(session, owner_id, model, models_dir=settings.models_dir)
    base_path: Path | None = resolved.base_model_path
    if resolved.adapter_path is not None:
        model_path = resolved.adapter_path
    elif resolved.merged_path is not None:
        model_path = resolved.merged_path
    else:
        model_path, base_path = resolved.base_model_path, None  # a base model judged alone
    if base is not None:
        base_path = resolve_for_owner(session, owner_id, base, models_dir=settings.models_dir).base_model_path
    row = Evaluation(
        id=new_id("eval"),
        owner_id=owner_id,
        model=model,
        file_id=record.id,
        base=base,
        params=checked,
        model_path=str(model_path),
        base_model_path=str(base_path) if base_path else None,
        status="queued",
        created_at=now(),
    )
    session.add(row)
    session.commit()
    return row


def get_evaluation(session: Session, owner_id: str, evaluation_id: str) -> Evaluation:
    row = session.get(Evaluation, evaluation_id)
    if row is None or row.owner_id != owner_id:
        raise NotFoundError(f"evaluation {evaluation_id!r} not found", param="evaluation_id")
    return row


def list_evaluations(
    session: Session, owner_id: str, *, limit: int = 20, after: str | None = None
) -> Page[Evaluation]:
    """The owner's evaluations, newest first; `after` is the last id of the previous page."""
    check_limit(limit)
    query = select(Evaluation).where(Evaluation.owner_id == owner_id)
    if after is not None:
        cursor = get_evaluation(session, owner_id, after)
        query = query.where(
            (Evaluation.created_at < cursor.created_at)
            | ((Evaluation.created_at == cursor.created_at) & (Evaluation.id < cursor.id))
        )
    rows = list(
        session.scalars(query.order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(limit + 1))
    )
    return Page(data=rows[:limit], has_more=len(rows) > limit)


# --- the runner's side ---------------------------------------------------------------------------
def claim_evaluation(session: Session, runner_id: str, blobs: BlobStore) -> tuple[Evaluation, Path] | None:
    """Take the oldest queued evaluation (an atomic update, so two runners never take the same one);
    returns it with the path of its data file."""
    candidates = session.scalars(
        select(Evaluation.id).where(Evaluation.status == "queued").order_by(Evaluation.created_at).limit(5)
    ).all()
    for evaluation_id in candidates:
        taken = session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status == "queued")
            .values(status="running", runner_id=runner_id, started_at=now())
        )
        session.commit()
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            row = session.get(Evaluation, evaluation_id)
            assert row is not None
            session.refresh(row)
            return row, file_blob_path(session, row.file_id, blobs)
    return None


def record_progress(session: Session, evaluation_id: str, done: int, total: int) -> None:
    row = session.get(Evaluation, evaluation_id)
    if row is not None and row.status == "running":
        row.progress = {"done": done, "total": total}
        session.commit()


def complete_evaluation(session: Session, evaluation_id: str, result: dict[str, Any]) -> None:
    row = session.get(Evaluation, evaluation_id)
    if row is None:
        return
    row.status, row.result, row.finished_at = "completed", result, now()
    row.progress = {"done": result.get("n_pairs"), "total": result.get("n_pairs")}
    session.commit()


def fail_evaluation(session: Session, evaluation_id: str, message: str, code: str | None = None) -> None:
    row = session.get(Evaluation, evaluation_id)
    if row is None:
        return
    row.status, row.error_message, row.error_code, row.finished_at = "error", message, code, now()
    session.commit()
