"""`/v1/evaluations`: held-out evaluations of a model or adapter on a preference file.

Thin: parse, call `preftune.service.evaluations`, present. A runner does the work; the object's
`status` goes queued -> running -> completed | error, `progress` counts the pairs done, and `result`
holds the figures (`preftune eval`'s JSON: the model's and the base model's).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from preftune.api.deps import CallerDep, SessionDep, SettingsDep
from preftune.api.pagination import ListResponse, list_response
from preftune.service import evaluations as evaluation_service
from preftune.store.models import Evaluation

router = APIRouter(tags=["evaluations"])


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="A fine-tuned model (ft:…, or its job id) or a base model on this server.")
    file: str = Field(description="Id (or dataset name) of a processed preference file to evaluate on.")
    base: str | None = Field(
        default=None, description="The base model to compare with (default: the fine-tuned model's own base)."
    )
    beta: float | None = Field(default=None, description="DPO beta of the loss and rewards (default 0.1).")
    max_length: int | None = Field(
        default=None, description="Longest prompt + answer in tokens (default 1024)."
    )
    batch_size: int | None = Field(default=None, description="Pairs per forward pass (default 8).")


class EvaluationError(BaseModel):
    message: str
    code: str | None = None


class EvaluationObject(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str = Field(description="eval-…")
    object: Literal["evaluation"] = "evaluation"
    model: str
    file: str
    base: str | None = None
    params: dict[str, Any]
    status: Literal["queued", "running", "completed", "error"]
    progress: dict[str, Any] | None = Field(default=None, description="{done, total} pairs.")
    result: dict[str, Any] | None = Field(
        default=None,
        description="n_pairs, beta, and `model` / `base` figures: loss, rewards/accuracies, rewards/margins, "
        "preference_accuracy, preference_accuracy_normalized, ...",
    )
    error: EvaluationError | None = None
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None


def _present(row: Evaluation) -> EvaluationObject:
    return EvaluationObject(
        id=row.id,
        model=row.model,
        file=row.file_id,
        base=row.base,
        params=row.params,
        status=row.status,  # type: ignore[arg-type]
        progress=row.progress,
        result=row.result,
        error=EvaluationError(message=row.error_message, code=row.error_code) if row.error_message else None,
        created_at=int(row.created_at),
        started_at=int(row.started_at) if row.started_at else None,
        finished_at=int(row.finished_at) if row.finished_at else None,
    )


@router.post(
    "/evaluations",
    response_model=EvaluationObject,
    responses={404: {"description": "The file or model is not found"}},
    summary="Evaluate a model or adapter on held-out preference pairs",
)
def create_evaluation(
    body: EvaluationCreate,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> EvaluationObject:
    """Checks the file (processed preference pairs, yours) and the model, then queues the evaluation."""
    row = evaluation_service.create_evaluation(
        session,
        caller.owner_id,
        model=body.model,
        file=body.file,
        base=body.base,
        settings=settings,
        params={"beta": body.beta, "max_length": body.max_length, "batch_size": body.batch_size},
    )
    return _present(row)


@router.get("/evaluations", response_model=ListResponse[EvaluationObject], summary="Your evaluations")
def list_evaluations(
    caller: CallerDep,
    session: SessionDep,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = Query(None, description="The last id of the previous page."),
) -> ListResponse[EvaluationObject]:
    page = evaluation_service.list_evaluations(session, caller.owner_id, limit=limit, after=after)
    return list_response([_present(row) for row in page.data], has_more=page.has_more)


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationObject, summary="One evaluation")
def retrieve_evaluation(
    caller: CallerDep,
    session: SessionDep,
    evaluation_id: str = Path(description="eval-… id"),
) -> EvaluationObject:
    return _present(evaluation_service.get_evaluation(session, caller.owner_id, evaluation_id))
