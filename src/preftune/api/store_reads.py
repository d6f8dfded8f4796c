"""Read-only queries the OpenAI-compatible routes need beyond `preftune.service.jobs`.

OpenAI's event list interleaves per-step `metrics` events with milestones by time, which
needs each metric row's timestamp and id (the service's `list_metrics` returns the lines
only). Callers check ownership through the service first; nothing here writes.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from preftune.store.models import JobMetric


def training_metric_rows(session: Session, job_id: str) -> list[JobMetric]:
    """A job's training metric rows in step order (the caller has checked the job's owner)."""
    query = (
        select(JobMetric)
        .where(JobMetric.job_id == job_id, JobMetric.split == "train")
        .order_by(JobMetric.step)
    )
    return list(session.scalars(query))
