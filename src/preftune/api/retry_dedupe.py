"""Job creation that survives the `openai` client's retries, which carry no idempotency key.

The official client retries a timed-out or 5xx create without an `Idempotency-Key`, but it
marks each retry with `x-stainless-retry-count`. A retried create whose request is identical
(same owner, files, model and resolved hyperparameters) to a job created moments ago is the
same request arriving twice: we answer with that job instead of queueing a duplicate. A first
attempt (retry count 0) always creates, so two deliberate identical jobs are still possible.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from preftune.service.common import now
from preftune.service.jobs import _request_hash
from preftune.store.models import Job
from preftune.training.spec import TrainingSpec

# A retry arrives within the client's backoff plus its timeout (10 minutes by default for openai).
RETRY_WINDOW_SECONDS = 15 * 60


def retry_count(header: str | None) -> int:
    return int(header) if header and header.isdigit() else 0


def find_retried_job(
    session: Session,
    owner_id: str,
    *,
    model: str,
    training_file: str,
    validation_file: str | None,
    params: dict[str, Any],
) -> Job | None:
    """The owner's job created in the last `RETRY_WINDOW_SECONDS` from the identical request, if any."""
    spec = TrainingSpec.from_params(dict(params))
    fingerprint = _request_hash(model, training_file, validation_file, spec)
    return session.scalar(
        select(Job)
        .where(
            Job.owner_id == owner_id,
            Job.request_hash == fingerprint,
            Job.created_at >= now() - RETRY_WINDOW_SECONDS,
        )
        .order_by(Job.created_at.desc())
        .limit(1)
    )
