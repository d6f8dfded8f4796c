"""Each dialect's words for the service's job states: one map per dialect, all of them here.

The service has one state machine (`preftune.service.states.JobStatus`); a dialect only renames
its states. Every map covers every state (`tests/api/test_dialects.py`), so a state added to
the service fails the tests until each dialect has a word for it.
"""

from __future__ import annotations

from typing import Literal

from preftune.service.states import JobStatus

S = JobStatus

NATIVE: dict[JobStatus, str] = {s: s.value for s in JobStatus}

OpenAIStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
OPENAI: dict[JobStatus, OpenAIStatus] = {
    S.PENDING: "validating_files",
    S.QUEUED: "queued",
    S.RUNNING: "running",
    S.CANCEL_REQUESTED: "running",
    S.COMPLETED: "succeeded",
    S.ERROR: "failed",
    S.USER_ERROR: "failed",
    S.CANCELLED: "cancelled",
}

# Together's FinetuneResponse.status (the SDK's Literal has no user_error).
TogetherStatus = Literal[
    "pending",
    "queued",
    "running",
    "compressing",
    "uploading",
    "cancel_requested",
    "cancelled",
    "error",
    "completed",
]
TOGETHER: dict[JobStatus, TogetherStatus] = {
    S.PENDING: "pending",
    S.QUEUED: "queued",
    S.RUNNING: "running",
    S.CANCEL_REQUESTED: "cancel_requested",
    S.COMPLETED: "completed",
    S.ERROR: "error",
    S.USER_ERROR: "error",
    S.CANCELLED: "cancelled",
}

# Fireworks' JobState (fine-tuning jobs, dpoJobs).
FIREWORKS: dict[JobStatus, str] = {
    S.PENDING: "JOB_STATE_VALIDATING",
    S.QUEUED: "JOB_STATE_PENDING",
    S.RUNNING: "JOB_STATE_RUNNING",
    S.CANCEL_REQUESTED: "JOB_STATE_CANCELLING",
    S.COMPLETED: "JOB_STATE_COMPLETED",
    S.ERROR: "JOB_STATE_FAILED",
    S.USER_ERROR: "JOB_STATE_FAILED",
    S.CANCELLED: "JOB_STATE_CANCELLED",
}

ALL: dict[str, dict[JobStatus, str]] = {
    "native": NATIVE,
    "openai": dict(OPENAI),
    "together": dict(TOGETHER),
    "fireworks": FIREWORKS,
}


def openai_status(native: str) -> OpenAIStatus:
    return OPENAI[JobStatus(native)]


def together_status(native: str) -> TogetherStatus:
    return TOGETHER[JobStatus(native)]


def fireworks_status(native: str) -> str:
    return FIREWORKS[JobStatus(native)]
