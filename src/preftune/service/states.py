"""The job state machine: the states, which moves are legal, and which states are final.

`pending -> queued -> running -> completed | error | user_error | cancelled`, with
`cancel_requested` between `running` and `cancelled`. A running job whose runner died goes
back to `running` under a new lease (a restart), or `queued` after a retryable failure.
"""

from __future__ import annotations

from enum import StrEnum

from preftune.errors import ConflictError


class JobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    CANCEL_REQUESTED = "cancel_requested"
    COMPLETED = "completed"
    ERROR = "error"
    USER_ERROR = "user_error"
    CANCELLED = "cancelled"


S = JobStatus
TERMINAL: frozenset[JobStatus] = frozenset({S.COMPLETED, S.ERROR, S.USER_ERROR, S.CANCELLED})
ACTIVE: frozenset[JobStatus] = frozenset({S.RUNNING, S.CANCEL_REQUESTED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.PENDING: frozenset({S.QUEUED, S.USER_ERROR, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.ERROR}),
    # running -> running: a restarted attempt under a new lease; running -> queued: retry after a failure.
    S.RUNNING: frozenset(
        {S.RUNNING, S.QUEUED, S.CANCEL_REQUESTED, S.COMPLETED, S.ERROR, S.USER_ERROR, S.CANCELLED}
    ),
    S.CANCEL_REQUESTED: frozenset({S.CANCELLED, S.COMPLETED, S.ERROR, S.USER_ERROR}),
    S.COMPLETED: frozenset(),
    S.ERROR: frozenset(),
    S.USER_ERROR: frozenset(),
    S.CANCELLED: frozenset(),
}


def can_transition(current: str, target: str) -> bool:
    return JobStatus(target) in TRANSITIONS[JobStatus(current)]


def check_transition(job_id: str, current: str, target: str) -> None:
    """Raise `ConflictError` when `current -> target` is not a legal move."""
    if not can_transition(current, target):
        raise ConflictError(
            f"job {job_id} is {current} and cannot become {target}",
            param="status",
            code="invalid_state_transition",
        )


def is_terminal(status: str) -> bool:
    return JobStatus(status) in TERMINAL
