"""Job creation that survives the Stainless clients' retries (`openai`, `together`, `fireworks-ai`).

Those clients retry a create after a timeout or a 5xx without an `Idempotency-Key`, marking the
retry with `x-stainless-retry-count`. A retry is the same request arriving twice, so it returns
the job the first attempt created (`service.jobs.find_retried_job`, same owner, same request,
within minutes); a first attempt always creates, so two deliberate identical jobs stay possible.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from preftune.config import Settings
from preftune.service import jobs as job_service
from preftune.service.keys import Caller
from preftune.store.blobs import BlobStore
from preftune.store.models import Job


def stainless_retry_count(
    x_stainless_retry_count: str | None = Header(
        None, alias="x-stainless-retry-count", include_in_schema=False
    ),
) -> int:
    header = x_stainless_retry_count
    return int(header) if header and header.isdigit() else 0


RetryCount = Annotated[int, Depends(stainless_retry_count)]


def create_job_once(
    session: Session,
    caller: Caller,
    *,
    settings: Settings,
    retry: int,
    model: str,
    training_file: str,
    validation_file: str | None,
    params: dict[str, Any],
    idempotency_key: str | None = None,
    blobs: BlobStore | None = None,
) -> Job:
    """`service.jobs.create_job`, or the job an identical first attempt created when this is a retry."""
    if idempotency_key is None and retry > 0:
        previous = job_service.find_retried_job(
            session,
            caller.owner_id,
            model=model,
            training_file=training_file,
            validation_file=validation_file,
            params=params,
        )
        if previous is not None:
            return previous
    return job_service.create_job(
        session,
        caller.owner_id,
        settings=settings,
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        params=params,
        idempotency_key=idempotency_key,
        blobs=blobs,
    )
