"""`/v1/fine_tuning/jobs*`: the OpenAI-compatible job routes, for the official `openai` client.

Same jobs as `/v1/fine-tunes`, shown in OpenAI's shapes and states. Creation maps
`method.<type>.hyperparameters` onto `TrainingSpec` (see `preftune.api.openai_schemas`) and
is idempotent under the client's retries, which carry no idempotency key but mark themselves
with `x-stainless-retry-count` (see `preftune.service.jobs.find_retried_job`). A first attempt
always creates, so two deliberate identical jobs are still possible.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Path, Query
from sqlalchemy.orm import Session

from preftune.api import presenters
from preftune.api.deps import get_blobs, get_db, get_owner, get_settings
from preftune.api.openai_schemas import OpenAICheckpoint, OpenAIFineTuningJob, OpenAIJobCreate, OpenAIJobEvent
from preftune.api.schemas import ListResponse
from preftune.config import Settings
from preftune.errors import NotFoundError
from preftune.service import jobs as job_service
from preftune.service.keys import Caller
from preftune.store.blobs import BlobStore

router = APIRouter(tags=["openai-compatible"])

# Events and metric points are read in pages of this size to merge them.
_READ_PAGE = 1000


def _retry_count(header: str | None) -> int:
    return int(header) if header and header.isdigit() else 0


@router.post(
    "/fine_tuning/jobs",
    response_model=OpenAIFineTuningJob,
    responses={404: {"description": "The file or model is not found"}, 409: {"description": "Key reused"}},
    summary="Create a job (OpenAI shape)",
)
def create_job(
    body: OpenAIJobCreate,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    stainless_retry: str | None = Header(None, alias="x-stainless-retry-count", include_in_schema=False),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
    blobs: BlobStore = Depends(get_blobs),
) -> OpenAIFineTuningJob:
    """`method.dpo.hyperparameters` takes beta, n_epochs, batch_size, learning_rate_multiplier and any
    preftune knob (rpo_alpha, simpo_gamma, lora_r, ...); `method.type: supervised` trains SFT."""
    params = body.spec_params()
    if idempotency_key is None and _retry_count(stainless_retry) > 0:
        previous = job_service.find_retried_job(
            session,
            caller.owner_id,
            model=body.model,
            training_file=body.training_file,
            validation_file=body.validation_file,
            params=params,
        )
        if previous is not None:
            return presenters.openai_job(previous)
    job = job_service.create_job(
        session,
        caller.owner_id,
        settings=settings,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        params=params,
        idempotency_key=idempotency_key,
        blobs=blobs,
    )
    return presenters.openai_job(job)


@router.get(
    "/fine_tuning/jobs", response_model=ListResponse[OpenAIFineTuningJob], summary="List jobs (OpenAI)"
)
def list_jobs(
    after: str | None = Query(None, description="The last job id of the previous page."),
    limit: int = Query(20, ge=1, le=1000),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
) -> ListResponse[OpenAIFineTuningJob]:
    page = job_service.list_jobs(session, caller.owner_id, limit=limit, after=after)
    return ListResponse[OpenAIFineTuningJob](
        data=[presenters.openai_job(row) for row in page.data], has_more=page.has_more
    )


@router.get(
    "/fine_tuning/jobs/{job_id}", response_model=OpenAIFineTuningJob, summary="Retrieve a job (OpenAI)"
)
def retrieve_job(
    job_id: str = Path(description="ftjob-… id"),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
) -> OpenAIFineTuningJob:
    return presenters.openai_job(job_service.get_job(session, caller.owner_id, job_id))


@router.post(
    "/fine_tuning/jobs/{job_id}/cancel", response_model=OpenAIFineTuningJob, summary="Cancel (OpenAI)"
)
def cancel_job(
    job_id: str = Path(description="ftjob-… id"),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
) -> OpenAIFineTuningJob:
    return presenters.openai_job(job_service.cancel_job(session, caller.owner_id, job_id))


@router.get(
    "/fine_tuning/jobs/{job_id}/events",
    response_model=ListResponse[OpenAIJobEvent],
    summary="Job events (OpenAI)",
)
def list_events(
    job_id: str = Path(description="ftjob-… id"),
    after: str | None = Query(None, description="The last event id of the previous page."),
    limit: int = Query(20, ge=1, le=1000),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
) -> ListResponse[OpenAIJobEvent]:
    """Newest first: `message` events (job milestones) and `metrics` events (one per training step)."""
    merged = _merged_events(session, caller.owner_id, job_id)
    start = 0
    if after is not None:
        ids = [event.id for event in merged]
        if after not in ids:
            raise NotFoundError(f"after: event {after!r} not found in job {job_id}", param="after")
        start = ids.index(after) + 1
    page = merged[start : start + limit]
    return ListResponse[OpenAIJobEvent](
        data=page,
        has_more=start + limit < len(merged),
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
    )


def _merged_events(session: Session, owner_id: str, job_id: str) -> list[OpenAIJobEvent]:
    events: list[OpenAIJobEvent] = []
    after: str | None = None
    while True:
        page = job_service.list_events(session, owner_id, job_id, after=after, limit=_READ_PAGE, order="asc")
        events.extend(presenters.openai_event(row) for row in page.data)
        if not page.has_more or not page.data:
            break
        after = page.data[-1].id
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
    job_id: str = Path(description="ftjob-… id"),
    after: str | None = Query(None, description="The last checkpoint id of the previous page."),
    limit: int = Query(10, ge=1, le=1000),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
) -> ListResponse[OpenAICheckpoint]:
    """Newest first."""
    job = job_service.get_job(session, caller.owner_id, job_id)
    rows = job_service.list_checkpoints(session, caller.owner_id, job_id, order="desc")
    items = [presenters.openai_checkpoint(row, job) for row in rows]
    start = 0
    if after is not None:
        ids = [c.id for c in items]
        if after not in ids:
            raise NotFoundError(f"after: checkpoint {after!r} not found in job {job_id}", param="after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return ListResponse[OpenAICheckpoint](
        data=page,
        has_more=start + limit < len(items),
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
    )
