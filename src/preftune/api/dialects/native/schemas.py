"""Request and response bodies of the native dialect (`/v1/files`, `/v1/fine-tunes`, `/v1/keys`).

Declared as pydantic models so that `/openapi.json` describes every route exactly. The
job-create body *is* `TrainingSpec` plus the files and model, so a knob added to the spec
appears in the API (and its schema) with no change here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from preftune.contracts.resources import Resources
from preftune.contracts.spec import TrainingSpec

RESOURCE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
JobStatus = Literal[
    "pending", "queued", "running", "cancel_requested", "completed", "error", "user_error", "cancelled"
]


# --- files ------------------------------------------------------------------------------
class FileObject(BaseModel):
    id: str = Field(description="file-…")
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = Field(default=None, description="Why validation failed, in one sentence.")
    name: str | None = Field(default=None, description="Optional dataset name chosen at upload.")
    sha256: str
    format: str | None = Field(
        default=None, description="preference, sft_messages, sft_prompt_completion, sft_text"
    )
    n_examples: int | None = None
    report_summary: dict[str, Any] | None = Field(
        default=None,
        description="Counts, the first errors and warnings; GET /files/{id}/report has all of it.",
    )


class DeletedObject(BaseModel):
    id: str
    object: str
    deleted: bool = True


# --- fine-tuning jobs -------------------------------------------------------------------------
class FineTuneCreate(TrainingSpec):
    """A job: the data, the base model and any `TrainingSpec` knob (defaults apply to the rest)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    training_file: str = Field(description="Id of an uploaded file with status processed.")
    validation_file: str | None = Field(default=None, description="Id of a processed file to evaluate on.")
    model: str = Field(
        description="Base model: an embedded model (smollm2-135m-instruct), a model directory on the server, "
        "or a hub id in the server's Hugging Face cache."
    )
    resources: Resources | None = Field(
        default=None,
        description="Processes per node, nodes, launcher (torchrun or ray) and strategy (auto, ddp, fsdp) "
        "to train with (default: one process). With several, the runner launches them through "
        "torch.distributed's launcher or Ray Train; the global batch stays batch_size x "
        "gradient_accumulation_steps.",
    )

    def spec_params(self) -> dict[str, Any]:
        """The knobs the caller set (defaults are filled by `TrainingSpec` itself)."""
        return {
            name: getattr(self, name) for name in self.model_fields_set if name in TrainingSpec.model_fields
        }


class JobProgress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    eta_seconds: float | None = None


class JobError(BaseModel):
    message: str
    code: str | None = None
    param: str | None = None


class FineTuneJob(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str = Field(description="ftjob-…")
    object: Literal["fine-tune"] = "fine-tune"
    model: str
    training_file: str
    validation_file: str | None = None
    status: JobStatus
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any] = Field(description="The resolved TrainingSpec; secrets are never shown.")
    progress: JobProgress
    latest_metrics: dict[str, Any] | None = None
    eval_metrics: dict[str, Any] | None = Field(
        default=None,
        description="The latest evaluation on the validation data (loss, rewards/accuracies, rewards/margins, "
        "preference_accuracy, ...).",
    )
    best_checkpoint_step: int | None = Field(
        default=None, description="Step of the checkpoint with the lowest validation loss (artifact=best)."
    )
    output_name: str | None = Field(default=None, description="ft:<base>:<suffix>:<job id> once completed.")
    error: JobError | None = None
    attempts: int = 0
    resources: dict[str, Any] = Field(
        default_factory=lambda: Resources().model_dump(),
        description="What the job trains on: processes_per_node, nodes, launcher, strategy.",
    )


class JobEvent(BaseModel):
    id: str
    object: Literal["event"] = "event"
    created_at: int
    seq: int = Field(description="Position in the job's ordered event stream.")
    type: str = Field(
        description="JOB_START, TRAINING_START, CHECKPOINT_SAVE, EPOCH_COMPLETE, JOB_COMPLETE, ..."
    )
    level: Literal["info", "warn", "error"] = "info"
    message: str
    data: dict[str, Any] | None = None


class MetricList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]] = Field(description="One object per step: step, loss, rewards/accuracies, ...")


class Checkpoint(BaseModel):
    id: str
    object: Literal["checkpoint"] = "checkpoint"
    job_id: str
    step: int
    created_at: int
    metrics: dict[str, Any] | None = None
    best: bool = Field(default=False, description="The checkpoint with the lowest validation loss.")


# --- keys -----------------------------------------------------------------------------------
class KeyCreate(BaseModel):
    name: str = Field(default="default", min_length=1, max_length=100)
    new_owner: bool = Field(
        default=False, description="Admins only: the key belongs to a new, separate owner."
    )


class APIKey(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    owner_id: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    is_admin: bool = False
    created_at: int
    last_used_at: int | None = None
    revoked_at: int | None = None


class APIKeyCreated(APIKey):
    key: str = Field(description="The secret: shown in this response only.")
