"""Fine-tuning jobs as users see them: create (validated, idempotent), get, list, cancel, and read
their events, metrics, checkpoints and output directories.

The runner's side of a job (claim, heartbeat, progress, outcome) is in `preftune.service.runs`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from preftune.config import Settings
from preftune.contracts.resources import Resources
from preftune.contracts.spec import TrainingSpec
from preftune.errors import (
    ConflictError,
    DataValidationError,
    InvalidRequestError,
    NotFoundError,
)
from preftune.service import artifacts, idempotency
from preftune.service.common import Page, check_limit, new_id, now
from preftune.service.events import EventType, add_event
from preftune.service.files import get_file
from preftune.service.models import FT_PREFIX, resolve_for_owner
from preftune.service.secrets import encrypt_secret
from preftune.service.states import JobStatus, check_transition, is_terminal
from preftune.store.blobs import BlobStore
from preftune.store.models import Checkpoint, File, Job, JobEvent, JobMetric

JOB_ID_PREFIX = "ftjob"
CHECKPOINT_REF_RE = re.compile(r"^(ftjob-[A-Za-z0-9]+)(?::([0-9]+))?$")
PREFERENCE_FORMATS = frozenset({"preference"})
SFT_FORMATS = frozenset({"sft_messages", "sft_prompt_completion", "sft_text"})
Artifact = Literal["adapter", "model", "merged", "checkpoint", "best"]
# The `openai` client retries within its backoff plus its timeout (10 minutes by default).
RETRY_WINDOW_SECONDS = 15 * 60


def job_dir(settings: Settings, job_id: str) -> Path:
    """The trainer's `output_dir` for a job."""
    return settings.jobs_dir / job_id


def spec_of(job: Job) -> TrainingSpec:
    """The job's full TrainingSpec (with secrets: for the runner only)."""
    return TrainingSpec.model_validate(job.spec)


def public_hyperparameters(job: Job) -> dict[str, Any]:
    """The resolved hyperparameters as shown to users (`wandb_api_key` reduced to whether it is set)."""
    return spec_of(job).public_dict()


def request_fingerprint(
    model: str,
    training_file: str,
    validation_file: str | None,
    spec: TrainingSpec,
    resources: Resources | None = None,
) -> str:
    """sha256 of a create request as resolved (defaults filled in), without the W&B key: two requests
    with equal fingerprints would queue identical jobs."""
    request: dict[str, Any] = {
        "model": model,
        "training_file": training_file,
        "validation_file": validation_file,
        "spec": spec.model_dump(mode="json", exclude={"wandb_api_key"}),
    }
    if resources is not None and resources != Resources():
        request["resources"] = resources.model_dump()  # one process: the same hash as before
    return idempotency.fingerprint(request)


def find_retried_job(
    session: Session,
    owner_id: str,
    *,
    model: str,
    training_file: str,
    validation_file: str | None,
    params: dict[str, Any],
    within_seconds: float = RETRY_WINDOW_SECONDS,
) -> Job | None:
    """The owner's newest job created in the last `within_seconds` from an identical request, if any.

    For clients that retry a create without an `Idempotency-Key` but say that it is a retry (the
    `openai` client's `x-stainless-retry-count`): such a retry is the same request arriving twice.
    Raises `TrainingSpecError` for invalid params, as `create_job` would.
    """
    spec = TrainingSpec.from_params(dict(params))
    fingerprint = request_fingerprint(model, training_file, validation_file, spec)
    return session.scalar(
        select(Job)
        .where(
            Job.owner_id == owner_id,
            Job.request_hash == fingerprint,
            Job.created_at >= now() - within_seconds,
        )
        .order_by(Job.created_at.desc())
        .limit(1)
    )


def _check_data_file(record: File, spec: TrainingSpec, param: str) -> None:
    if record.status != "processed":
        raise DataValidationError(
            f"{param} {record.id} failed validation and cannot be trained on: {record.status_details or 'see its report'}"
            f" (`preftune files retrieve {record.id} --report`); fix the file and upload it again",
            param=param,
            code="invalid_file",
        )
    allowed = PREFERENCE_FORMATS if spec.training_method == "dpo" else SFT_FORMATS
    if record.format not in allowed:
        want = "preference pairs (input, preferred_output, non_preferred_output)"
        if spec.training_method == "sft":
            want = "SFT data (messages, prompt/completion or text)"
        raise DataValidationError(
            f"{param} {record.id} holds {record.format} data, but training_method={spec.training_method} needs "
            f"{want}; upload matching data or change training_method",
            param=param,
            code="wrong_file_format",
        )


def resolve_checkpoint_ref(
    session: Session, owner_id: str, ref: str, settings: Settings, blobs: BlobStore | None = None
) -> Path:
    """`JOB_ID[:STEP]` of one of the owner's jobs -> the directory to start from.

    Without a step: the job's final output (`adapter/` or `model/`) if it completed, else its latest
    checkpoint. With a step: that checkpoint. With a remote `blobs`, the directory is this machine's
    copy of the store's (the runner that trains fetches its own).
    """

    def here(path: Path | str) -> Path:
        return artifacts.local_artifact(settings, blobs, path) if blobs is not None else Path(path)

    match = CHECKPOINT_REF_RE.match(ref)
    if match is None:
        raise InvalidRequestError(
            f"from_checkpoint must be JOB_ID or JOB_ID:STEP of one of your jobs (got {ref!r}), "
            "e.g. ftjob-abc123:40",
            param="from_checkpoint",
        )
    source_id, step = match.group(1), match.group(2)
    source = session.get(Job, source_id)
    if source is None or source.owner_id != owner_id:
        raise NotFoundError(f"from_checkpoint: job {source_id} not found", param="from_checkpoint")
    if step is not None:
        ckpt = session.scalar(
            select(Checkpoint).where(Checkpoint.job_id == source_id, Checkpoint.step == int(step))
        )
        if ckpt is None or not here(ckpt.path).is_dir():
            steps = ", ".join(str(c.step) for c in _checkpoints(session, source_id)) or "none"
            raise NotFoundError(
                f"from_checkpoint: job {source_id} has no checkpoint at step {step} (available: {steps})",
                param="from_checkpoint",
            )
        return here(ckpt.path)
    out = job_dir(settings, source_id)
    for name in ("adapter", "model"):
        if source.status == JobStatus.COMPLETED and here(out / name).is_dir():
            return out / name
    latest = _checkpoints(session, source_id)
    if latest and here(latest[-1].path).is_dir():
        return here(latest[-1].path)
    raise NotFoundError(
        f"from_checkpoint: job {source_id} has no output or checkpoint yet (status {source.status})",
        param="from_checkpoint",
    )


def create_job(
    session: Session,
    owner_id: str,
    *,
    model: str,
    training_file: str,
    settings: Settings,
    validation_file: str | None = None,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    resources: dict[str, Any] | None = None,
    blobs: BlobStore | None = None,
) -> Job:
    """Validate a job request and queue it. Nothing is queued when anything is wrong.

    `resources` (`contracts.resources.Resources`): processes per node and nodes; a bad one is an
    `InvalidRequestError` naming the field (`resources.processes_per_node`).

    Raises `TrainingSpecError` (a knob, named), `NotFoundError`/`DataValidationError` for the files
    (`param` training_file / validation_file), `ModelNotFoundError` (`param` model). With an
    `idempotency_key`, a repeated request of the same owner returns the job created first; the same
    key with a different request is a `ConflictError`.
    """
    spec = TrainingSpec.from_params(dict(params or {}))
    wanted = Resources.parse(resources)
    idempotency.check_key(idempotency_key)
    fingerprint = request_fingerprint(model, training_file, validation_file, spec, wanted)
    if idempotency_key is not None:
        existing = idempotency.find_replay(session, Job, owner_id, idempotency_key, fingerprint, what="job")
        if existing is not None:
            return existing

    train_record = get_file(session, owner_id, training_file, param="training_file")
    _check_data_file(train_record, spec, "training_file")
    validation_id: str | None = None
    if validation_file is not None:
        val_record = get_file(session, owner_id, validation_file, param="validation_file")
        _check_data_file(val_record, spec, "validation_file")
        validation_id = val_record.id
    if not model:
        raise InvalidRequestError("model is required", param="model")
    checkpoint_path = None
    if spec.from_checkpoint is not None:
        checkpoint_path = str(
            resolve_checkpoint_ref(session, owner_id, spec.from_checkpoint, settings, blobs)
        )
    if model.startswith(FT_PREFIX):
        # Training on from a fine-tuned model (as the hosted services allow): its base model, its weights.
        tuned = resolve_for_owner(session, owner_id, model)
        if checkpoint_path is not None:
            raise InvalidRequestError(
                "give either a fine-tuned model as model or from_checkpoint, not both",
                param="from_checkpoint",
            )
        source = session.get(Job, tuned.job_id) if tuned.job_id else None
        model = source.model if source is not None else str(tuned.base_model_path)
        weights = tuned.adapter_path or tuned.merged_path
        checkpoint_path = str(weights) if weights is not None else None
    from preftune.contracts.base_models import resolve_model

    resolve_model(model, settings.models_dir)  # raises ModelNotFoundError naming `model`

    stamp = now()
    job = Job(
        id=new_id(JOB_ID_PREFIX),
        owner_id=owner_id,
        model=model,
        training_file_id=train_record.id,
        validation_file_id=validation_id,
        spec=spec.model_dump(mode="json") | {"wandb_api_key": encrypt_secret(settings, _secret(spec))},
        from_checkpoint_path=checkpoint_path,
        resources=wanted.model_dump(),
        status=JobStatus.PENDING.value,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        created_at=stamp,
        attempts=0,
        step=0,
    )
    session.add(job)
    add_event(session, job.id, EventType.JOB_PENDING, "Job created; files validated", {"model": model})
    check_transition(job.id, job.status, JobStatus.QUEUED)
    job.status = JobStatus.QUEUED.value
    add_event(session, job.id, EventType.JOB_QUEUED, "Job queued for a runner")
    return idempotency.commit_or_replay(session, job, owner_id, idempotency_key, fingerprint, what="job")


def _secret(spec: TrainingSpec) -> str | None:
    return spec.wandb_api_key.get_secret_value() if spec.wandb_api_key is not None else None


def get_job(session: Session, owner_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.owner_id != owner_id:
        raise NotFoundError(f"fine-tuning job {job_id!r} not found", param="job_id", code="job_not_found")
    return job


def list_jobs(
    session: Session,
    owner_id: str,
    *,
    limit: int = 20,
    after: str | None = None,
    status: str | None = None,
) -> Page[Job]:
    """The owner's jobs, newest first; `after` is the last id of the previous page."""
    check_limit(limit)
    query = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        try:
            query = query.where(Job.status == JobStatus(status).value)
        except ValueError:
            raise InvalidRequestError(
                f"status must be one of {', '.join(s.value for s in JobStatus)} (got {status!r})",
                param="status",
            ) from None
    if after is not None:
        cursor = session.get(Job, after)
        if cursor is None or cursor.owner_id != owner_id:
            raise NotFoundError(f"after: fine-tuning job {after!r} not found", param="after")
        query = query.where(
            (Job.created_at < cursor.created_at)
            | ((Job.created_at == cursor.created_at) & (Job.id < cursor.id))
        )
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return Page(data=rows[:limit], has_more=len(rows) > limit)


def set_status(session: Session, job: Job, target: JobStatus, **values: Any) -> bool:
    """Move `job` to `target` only if nobody changed its status meanwhile (compare-and-set).

    Returns False when the row's status is no longer the one `job` holds; the caller re-reads.
    Not committed.
    """
    check_transition(job.id, job.status, target)
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == job.status)
        .values(status=target.value, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    job.status = target.value
    for key, value in values.items():
        setattr(job, key, value)
    return True


def cancel_job(session: Session, owner_id: str, job_id: str) -> Job:
    """Cancel a job: at once if it has not started, else ask its runner to stop (`cancel_requested`).

    The runner stops training within seconds, keeps the last checkpoint and marks the job cancelled.
    Cancelling a job that is already being cancelled returns it unchanged; a finished job is a
    `ConflictError`.
    """
    for _ in range(10):
        job = get_job(session, owner_id, job_id)
        session.refresh(job)
        status = JobStatus(job.status)
        if status == JobStatus.CANCEL_REQUESTED:
            return job
        if is_terminal(status):
            raise ConflictError(
                f"fine-tuning job {job_id} has already {status.value.replace('_', ' ')}; there is nothing to cancel",
                param="job_id",
                code="job_finished",
            )
        if status in (JobStatus.PENDING, JobStatus.QUEUED):
            if set_status(session, job, JobStatus.CANCELLED, finished_at=now()):
                add_event(session, job.id, EventType.JOB_CANCELLED, "Job cancelled before it started")
                session.commit()
                return job
        elif set_status(session, job, JobStatus.CANCEL_REQUESTED):
            add_event(
                session, job.id, EventType.JOB_CANCEL_REQUESTED, "Cancel requested; stopping at the next step"
            )
            session.commit()
            return job
        session.rollback()
    raise ConflictError(f"fine-tuning job {job_id} kept changing state; try again", param="job_id")


def _event_seq(after: str | int | None) -> int | None:
    if after is None or isinstance(after, int):
        return after
    text = after.removeprefix("ftevent-")
    if not text.isdigit():
        raise InvalidRequestError(
            f"after must be an event id such as ftevent-12 (got {after!r})", param="after"
        )
    return int(text)


def list_events(
    session: Session,
    owner_id: str,
    job_id: str,
    *,
    after: str | int | None = None,
    limit: int = 100,
    order: Literal["asc", "desc"] = "asc",
) -> Page[JobEvent]:
    """A job's events in order (`asc`: oldest first, `after` = last seen; `desc`: newest first, as OpenAI)."""
    check_limit(limit)
    get_job(session, owner_id, job_id)
    seq = _event_seq(after)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if order == "asc":
        if seq is not None:
            query = query.where(JobEvent.seq > seq)
        query = query.order_by(JobEvent.seq.asc())
    else:
        if seq is not None:
            query = query.where(JobEvent.seq < seq)
        query = query.order_by(JobEvent.seq.desc())
    rows = list(session.scalars(query.limit(limit + 1)))
    return Page(data=rows[:limit], has_more=len(rows) > limit)


def list_metrics(
    session: Session,
    owner_id: str,
    job_id: str,
    *,
    split: str | None = None,
    after_step: int | None = None,
) -> list[dict[str, Any]]:
    """A job's per-step metrics (the trainer's `metrics.jsonl` lines), by split then step."""
    get_job(session, owner_id, job_id)
    query = select(JobMetric).where(JobMetric.job_id == job_id)
    if split is not None:
        query = query.where(JobMetric.split == split)
    if after_step is not None:
        query = query.where(JobMetric.step > after_step)
    rows = session.scalars(query.order_by(JobMetric.split.desc(), JobMetric.step))
    return [dict(row.data) for row in rows]


def list_metric_rows(
    session: Session, owner_id: str, job_id: str, *, split: Literal["train", "eval"] = "train"
) -> list[JobMetric]:
    """A job's metric rows of one split in step order, with their ids and timestamps (which OpenAI's
    event list needs to interleave `metrics` events with milestones by time)."""
    get_job(session, owner_id, job_id)
    query = (
        select(JobMetric).where(JobMetric.job_id == job_id, JobMetric.split == split).order_by(JobMetric.step)
    )
    return list(session.scalars(query))


def _checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    return list(
        session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step))
    )


def list_checkpoints(
    session: Session, owner_id: str, job_id: str, *, order: Literal["asc", "desc"] = "desc"
) -> list[Checkpoint]:
    """A job's saved checkpoints (newest first by default, as OpenAI lists them)."""
    get_job(session, owner_id, job_id)
    rows = _checkpoints(session, job_id)
    return rows if order == "asc" else rows[::-1]


def artifact_path(
    session: Session,
    owner_id: str,
    job_id: str,
    settings: Settings,
    *,
    artifact: Artifact = "adapter",
    step: int | None = None,
    blobs: BlobStore | None = None,
) -> Path:
    """The directory to download: `adapter` (the LoRA adapter, or the full model for full fine-tuning),
    `model`, `merged` (needs `merge=true`), `checkpoint` (`step` required) or `best` (the checkpoint
    with the lowest validation loss; needs validation data and n_evals >= 2). With a remote `blobs`, the
    directory is fetched from the store into this machine's `jobs/` first, whichever runner wrote it."""
    job = get_job(session, owner_id, job_id)

    def here(path: Path | str) -> Path:
        return artifacts.local_artifact(settings, blobs, path) if blobs is not None else Path(path)

    out = job_dir(settings, job.id)
    if artifact == "best":
        if job.best_step is None:
            raise NotFoundError(
                f"job {job.id} has no best checkpoint (it needs validation data and n_evals >= 2)",
                param="artifact",
            )
        artifact, step = "checkpoint", job.best_step
    if artifact == "checkpoint":
        if step is None:
            raise InvalidRequestError("step is required to download a checkpoint", param="step")
        ckpt = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == step))
        if ckpt is None or not here(ckpt.path).is_dir():
            steps = ", ".join(str(c.step) for c in _checkpoints(session, job.id)) or "none"
            raise NotFoundError(
                f"job {job.id} has no checkpoint at step {step} (available: {steps})", param="step"
            )
        return here(ckpt.path)
    if artifact not in ("adapter", "model", "merged"):
        raise InvalidRequestError(
            f"artifact must be adapter, model, merged, checkpoint or best (got {artifact!r})",
            param="artifact",
        )
    if job.status != JobStatus.COMPLETED:
        raise ConflictError(
            f"job {job.id} is {job.status}; its {artifact} can be downloaded once it has completed "
            "(checkpoints can be downloaded with artifact=checkpoint&step=N)",
            param="artifact",
            code="job_not_completed",
        )
    candidates = {"adapter": ["adapter", "model"], "model": ["model", "adapter"], "merged": ["merged"]}[
        artifact
    ]
    for name in candidates:
        if here(out / name).is_dir():
            return out / name
    hint = " (create the job with merge=true to get one)" if artifact == "merged" else ""
    raise NotFoundError(f"job {job.id} has no {artifact} output{hint}", param="artifact")
