"""`/v1/fine_tuning/jobs*`: the OpenAI-compatible job routes, for the official `openai` client.

Same jobs as `/v1/fine-tunes`, shown in OpenAI's shapes and states. Creation maps
`method.<type>.hyperparameters` onto `TrainingSpec` (see `api.dialects.openai.schemas`) and
is idempotent under the client's retries, which carry no idempotency key but mark themselves
with `x-stainless-retry-count` (`api.dialects.retries`, as for Together's and Fireworks' clients).
A first attempt always creates, so two deliberate identical jobs are still possible.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Query
from sqlalchemy.orm import Session

from preftune.api.deps import BlobsDep, CallerDep, IdempotencyKey, SessionDep, SettingsDep
from preftune.api.dialects.openai import presenters
from preftune.api.dialects.openai.schemas import (
    OpenAICheckpoint,
    OpenAIFineTuningJob,
    OpenAIJobCreate,
    OpenAIJobEvent,
)
from preftune.api.dialects.retries import RetryCount, create_job_once
from preftune.api.pagination import ListResponse, every_page, list_response, page_after
from preftune.service import jobs as job_service

router = APIRouter(tags=["openai-compatible"])

# Events and metric points are read in pages of this size to merge them.
_READ_PAGE = 1000


@router.post(
    "/fine_tuning/jobs",
    response_model=OpenAIFineTuningJob,
    responses={404: {"description": "The file or model is not found"}, 409: {"description": "Key reused"}},
    summary="Create a job (OpenAI shape)",
)
def create_job(
    *,
    body: OpenAIJobCreate,
    idempotency_key: IdempotencyKey = None,
    retry: RetryCount,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
) -> OpenAIFineTuningJob:
    """`method.dpo.hyperparameters` takes beta, n_epochs, batch_size, learning_rate_multiplier and any
    preftune knob (rpo_alpha, simpo_gamma, lora_r, ...); `method.type: supervised` trains SFT."""
    job = create_job_once(
        session,
        caller,
        settings=settings,
        retry=retry,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        params=body.spec_params(),
        idempotency_key=idempotency_key,
        blobs=blobs,
    )
    return presenters.openai_job(job)


@router.get(
    "/fine_tuning/jobs", response_model=ListResponse[OpenAIFineTuningJob], summary="List jobs (OpenAI)"
)
def list_jobs(
    *,
    after: str | None = Query(None, description="The last job id of the previous page."),
    limit: int = Query(20, ge=1, le=1000),
    caller: CallerDep,
    session: SessionDep,
) -> ListResponse[OpenAIFineTuningJob]:
    page = job_service.list_jobs(session, caller.owner_id, limit=limit, after=after)
    return list_response([presenters.openai_job(row) for row in page.data], has_more=page.has_more)


@router.get(
    "/fine_tuning/jobs/{job_id}", response_model=OpenAIFineTuningJob, summary="Retrieve a job (OpenAI)"
)
def retrieve_job(
    *,
    job_id: str = Path(description="ftjob-… id"),
    caller: CallerDep,
    session: SessionDep,
) -> OpenAIFineTuningJob:
    return presenters.openai_job(job_service.get_job(session, caller.owner_id, job_id))


@router.post(
    "/fine_tuning/jobs/{job_id}/cancel", response_model=OpenAIFineTuningJob, summary="Cancel (OpenAI)"
)
def cancel_job(
    *,
    job_id: str = Path(description="ftjob-… id"),
    caller: CallerDep,
    session: SessionDep,
) -> OpenAIFineTuningJob:
    return presenters.openai_job(job_service.cancel_job(session, caller.owner_id, job_id))


@router.get(
    "/fine_tuning/jobs/{job_id}/events",
    response_model=ListResponse[OpenAIJobEvent],
    summary="Job events (OpenAI)",
)
def list_events(
    *,
    job_id: str = Path(description="ftjob-… id"),
    after: str | None = Query(None, description="The last event id of the previous page."),
    limit: int = Query(20, ge=1, le=1000),
    caller: CallerDep,
    session: SessionDep,
) -> ListResponse[OpenAIJobEvent]:
    """Newest first: `message` events (job milestones) and `metrics` events (one per training step)."""
    merged = _merged_events(session, caller.owner_id, job_id)
    return page_after(merged, after, limit, what="event", where=f" in job {job_id}")


def _merged_events(session: Session, owner_id: str, job_id: str) -> list[OpenAIJobEvent]:
    rows = every_page(
        lambda after: job_service.list_events(
            session, owner_id, job_id, after=after, limit=_READ_PAGE, order="asc"
        )
    )
    events: list[OpenAIJobEvent] = [presenters.openai_event(row) for row in rows]
    metric_rows = job_service.list_metric_rows(session, owner_id, job_id, split="train")
    events.extend(presenters.openai_metric_event(row) for row in metric_rows)
    # Newest first; at equal seconds a milestone sorts after the step that caused it.
    order = {id(e): i for i, e in enumerate(events)}
    return sorted(events, key=lambda e: (e.created_at, e.type == "message", order[id(e)]), reverse=True)


@router.get(
    "/fine_tuning/jobs/{job_id}/checkpoints",
    response_model=ListResponse[OpenAICheckpoint],
    summary="Job checkpoints (OpenAI)",
)
def list_checkpoints(
    *,
    job_id: str = Path(description="ftjob-… id"),
    after: str | None = Query(None, description="The last checkpoint id of the previous page."),
    limit: int = Query(10, ge=1, le=1000),
    caller: CallerDep,
    session: SessionDep,
) -> ListResponse[OpenAICheckpoint]:
    """Newest first."""
    job = job_service.get_job(session, caller.owner_id, job_id)
    rows = job_service.list_checkpoints(session, caller.owner_id, job_id, order="desc")
    items = [presenters.openai_checkpoint(row, job) for row in rows]
    return page_after(items, after, limit, what="checkpoint", where=f" in job {job_id}")
