"""The tables, as typed SQLAlchemy 2 models. Portable across SQLite and PostgreSQL.

Timestamps are Unix seconds (floats): the API shows them as integers, and lease arithmetic
stays a plain comparison on both databases. Ids are strings with a type prefix (`file-…`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Owner(Base):
    """Whoever owns resources: every file, job, model and deployment belongs to one owner."""

    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    """An API key; only its sha256 is stored. `prefix` is shown so people can tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class File(Base):
    """An uploaded data file: its blob, its validation outcome and the full report."""

    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_files_owner_idempotency"),
        Index("ix_files_owner_created", "owner_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"))
    filename: Mapped[str] = mapped_column(String(500))
    # Optional dataset name; unique per owner among live files (checked by the service).
    name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    purpose: Mapped[str] = mapped_column(String(32), default="fine-tune")
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))  # uploaded | processed | error
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    n_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # As for jobs: a retried upload with the same key returns this file (released when it is deleted).
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # sha256 of the upload request (content, filename, purpose, name): a reused key with other content is refused.
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Job(Base):
    """A fine-tuning job: its request, its state, its lease and its outcome."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency"),
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"))
    model: Mapped[str] = mapped_column(String(1000))
    training_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    validation_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), nullable=True)
    # The full TrainingSpec (including secrets): never returned as is; see `TrainingSpec.public_dict`.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # `from_checkpoint` resolved to a directory at creation (after the owner check).
    from_checkpoint_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    # contracts.resources.Resources as a dict (None: one process, jobs from before the column).
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # sha256 of the create request, so a reused idempotency key with a different body is refused.
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Lease: which runner holds the job, with which claim, until when.
    runner_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A job queued again after a failed attempt is not claimed before this (the retry's back-off).
    retry_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Progress, as last reported by the trainer.
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    latest_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The latest evaluation on the validation data, and the step of the best checkpoint (lowest loss).
    latest_eval_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    best_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_name: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_param: Mapped[str | None] = mapped_column(String(200), nullable=True)


class JobEvent(Base):
    """One entry in a job's event stream. `seq` is global and increasing, so it orders every job's stream."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)

    @property
    def id(self) -> str:
        return f"ftevent-{self.seq}"


class JobMetric(Base):
    """One optimizer step's (or one eval's) metrics line, as the trainer reported it."""

    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "split", "step", name="uq_job_metrics_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(16), default="train")
    step: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class Checkpoint(Base):
    """A checkpoint the trainer saved (`checkpoints/step-N/` in the job directory)."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class FineTunedModel(Base):
    """A completed job's output, registered under `ft:<base>:<suffix>:<job id>`."""

    __tablename__ = "fine_tuned_models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    name: Mapped[str] = mapped_column(String(1000), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    base_model: Mapped[str] = mapped_column(String(1000))
    base_model_path: Mapped[str] = mapped_column(Text)
    adapter_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    merged_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class Deployment(Base):
    """A model kept loaded for chat (the inference team's routes drive it)."""

    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_owner_created", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"))
    model: Mapped[str] = mapped_column(String(1000))
    min_replicas: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Evaluation(Base):
    """A held-out evaluation of a model or adapter on a preference file (`preftune eval --remote`).

    The model is resolved to directories when it is created (after the owner check), so the runner
    that claims it needs no lookup of its own."""

    __tablename__ = "evaluations"
    __table_args__ = (
        Index("ix_evaluations_owner_created", "owner_id", "created_at"),
        Index("ix_evaluations_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"))
    model: Mapped[str] = mapped_column(String(1000))
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    base: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    # beta, max_length, batch_size
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_path: Mapped[str] = mapped_column(Text)
    base_model_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    runner_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class UploadGrant(Base):
    """A presigned upload URL issued (`service.uploads`): the signed token is the credential; this
    row makes it single-use across every API server sharing the database (`claimed_at`, set once by a
    conditional UPDATE)."""

    __tablename__ = "upload_grants"
    __table_args__ = (Index("ix_upload_grants_expires", "expires_at"),)

    # The file id the grant reserves: one grant per file id.
    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    claimed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class PendingDataset(Base):
    """A named dataset announced before its bytes (Fireworks' dataset flow, `service.datasets`): what
    its file does not carry, and whether the file is in and checked (`ready`)."""

    __tablename__ = "pending_datasets"

    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str | None] = mapped_column(String(500), nullable=True)
    example_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    ready: Mapped[bool] = mapped_column(Boolean, default=False)
