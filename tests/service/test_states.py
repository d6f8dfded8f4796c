"""The job state machine: legal moves and final states (each dialect's words: tests/api/test_dialects.py)."""

from __future__ import annotations

import pytest

from preftune.errors import ConflictError
from preftune.service.states import (
    TERMINAL,
    TRANSITIONS,
    JobStatus,
    can_transition,
    check_transition,
    is_terminal,
)

S = JobStatus


def test_every_state_has_rules() -> None:
    assert set(TRANSITIONS) == set(JobStatus)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.PENDING, S.QUEUED),
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.CANCELLED),
        (S.RUNNING, S.COMPLETED),
        (S.RUNNING, S.CANCEL_REQUESTED),
        (S.RUNNING, S.QUEUED),  # a failed attempt goes back to the queue
        (S.RUNNING, S.RUNNING),  # a restarted attempt under a new lease
        (S.CANCEL_REQUESTED, S.CANCELLED),
        (S.RUNNING, S.USER_ERROR),
        (S.RUNNING, S.ERROR),
    ],
)
def test_legal_moves(current: JobStatus, target: JobStatus) -> None:
    assert can_transition(current, target)
    check_transition("ftjob-x", current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.PENDING, S.RUNNING),  # files are validated and the job queued first
        (S.QUEUED, S.COMPLETED),
        (S.QUEUED, S.CANCEL_REQUESTED),  # a queued job is cancelled at once
        (S.CANCEL_REQUESTED, S.RUNNING),
        (S.CANCEL_REQUESTED, S.QUEUED),
        (S.COMPLETED, S.RUNNING),
        (S.CANCELLED, S.QUEUED),
        (S.ERROR, S.QUEUED),
    ],
)
def test_illegal_moves_are_conflicts(current: JobStatus, target: JobStatus) -> None:
    assert not can_transition(current, target)
    with pytest.raises(ConflictError) as info:
        check_transition("ftjob-x", current, target)
    assert "ftjob-x" in info.value.message and current.value in info.value.message


def test_final_states_have_no_way_out() -> None:
    for state in TERMINAL:
        assert is_terminal(state)
        assert TRANSITIONS[state] == frozenset()
    assert not is_terminal("running")
