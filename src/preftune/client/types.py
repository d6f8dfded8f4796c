"""Typed results of the SDK: the server's JSON objects as pydantic models.

Unknown fields are kept (`extra="allow"`), so an older SDK keeps working against a
newer server; the fields listed here are the documented ones (docs/api.md). They mirror
`preftune.api.schemas` by hand (the SDK must not import the server), so
tests/client/test_types_match_server.py compares them with the server's `/openapi.json`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "APIKey",
    "APIKeyCreated",
    "Checkpoint",
    "DeletedObject",
    "Evaluation",
    "EvaluationError",
    "FileObject",
    "FineTuneJob",
    "JobError",
    "JobEvent",
    "JobProgress",
    "MetricPoint",
]

JobStatus = Literal[
    "pending", "queued", "running", "cancel_requested", "completed", "error", "user_error", "cancelled"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "error", "user_error", "cancelled"})


class _Object(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class FileObject(_Object):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    name: str | None = None
    sha256: str
    format: str | None = None
    n_examples: int | None = None
    report_summary: dict[str, Any] | None = None


class JobProgress(_Object):
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    eta_seconds: float | None = None


class JobError(_Object):
    message: str
    code: str | None = None
    param: str | None = None


class FineTuneJob(_Object):
    id: str
    object: Literal["fine-tune"] = "fine-tune"
    model: str
    training_file: str
    validation_file: str | None = None
    status: JobStatus
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    progress: JobProgress
    latest_metrics: dict[str, Any] | None = None
    eval_metrics: dict[str, Any] | None = None
    best_checkpoint_step: int | None = None
    output_name: str | None = None
    error: JobError | None = None
    attempts: int = 0
    resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "processes_per_node": 1,
            "nodes": 1,
            "launcher": "torchrun",
            "strategy": "auto",
        }
    )

    @property
    def done(self) -> bool:
        """True once the job can no longer change (completed, error, user_error or cancelled)."""
        return self.status in TERMINAL_STATUSES


class JobEvent(_Object):
    id: str
    object: Literal["event"] = "event"
    created_at: int
    seq: int
    type: str
    level: Literal["info", "warn", "error"] = "info"
    message: str
    data: dict[str, Any] | None = None


class MetricPoint(_Object):
    """One optimizer step's metrics (TRL's names: `loss`, `rewards/accuracies`, ...; train steps add
    `tokens_per_s`, `pairs_per_s` and `model_flops_per_s` over all processes, and `mfu`, per device)."""

    step: int


class Checkpoint(_Object):
    id: str
    object: Literal["checkpoint"] = "checkpoint"
    job_id: str
    step: int
    created_at: int
    metrics: dict[str, Any] | None = None
    best: bool = False


class APIKey(_Object):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    owner_id: str
    prefix: str
    is_admin: bool = False
    created_at: int
    last_used_at: int | None = None
    revoked_at: int | None = None


class APIKeyCreated(APIKey):
    key: str
    """The secret itself: shown once, in this response only."""


class DeletedObject(_Object):
    id: str
    object: str
    deleted: bool


EvaluationStatus = Literal["queued", "running", "completed", "error"]


class EvaluationError(_Object):
    message: str
    code: str | None = None


class Evaluation(_Object):
    """A held-out evaluation (`client.evaluations`); `result` is `preftune eval`'s JSON once completed."""

    id: str
    object: Literal["evaluation"] = "evaluation"
    model: str
    file: str
    base: str | None = None
    params: dict[str, Any]
    status: EvaluationStatus
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: EvaluationError | None = None
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None

    @property
    def done(self) -> bool:
        return self.status in ("completed", "error")
