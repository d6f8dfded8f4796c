"""Typed job events: the names, and appending one to a job's ordered stream."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from sqlalchemy.orm import Session

from preftune.service.common import now
from preftune.store.models import JobEvent


class EventType(StrEnum):
    JOB_PENDING = "JOB_PENDING"
    JOB_QUEUED = "JOB_QUEUED"
    JOB_START = "JOB_START"
    JOB_RESTARTED = "JOB_RESTARTED"
    TRAINING_START = "TRAINING_START"
    CHECKPOINT_SAVE = "CHECKPOINT_SAVE"
    EPOCH_COMPLETE = "EPOCH_COMPLETE"
    EVAL = "EVAL"
    EARLY_STOP = "EARLY_STOP"
    TRAINING_COMPLETE = "TRAINING_COMPLETE"
    MODEL_REGISTERED = "MODEL_REGISTERED"
    JOB_COMPLETE = "JOB_COMPLETE"
    JOB_RETRY = "JOB_RETRY"
    JOB_ERROR = "JOB_ERROR"
    JOB_USER_ERROR = "JOB_USER_ERROR"
    JOB_CANCEL_REQUESTED = "JOB_CANCEL_REQUESTED"
    JOB_CANCELLED = "JOB_CANCELLED"


Level = Literal["info", "warn", "error"]

ERROR_EVENTS = frozenset({EventType.JOB_ERROR, EventType.JOB_USER_ERROR})
WARN_EVENTS = frozenset({EventType.JOB_RESTARTED, EventType.JOB_RETRY})


def level_of(event_type: EventType) -> Level:
    if event_type in ERROR_EVENTS:
        return "error"
    if event_type in WARN_EVENTS:
        return "warn"
    return "info"


def add_event(
    session: Session,
    job_id: str,
    event_type: EventType | str,
    message: str,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event (not committed: it joins the caller's transaction)."""
    typed = EventType(event_type)
    event = JobEvent(
        job_id=job_id,
        type=typed.value,
        level=level_of(typed),
        message=message,
        data=data or None,
        created_at=now(),
    )
    session.add(event)
    return event
