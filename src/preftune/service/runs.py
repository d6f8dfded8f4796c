"""The runner's side of a job: claim with a lease, heartbeat, report progress, and record the outcome.

A claim is one conditional UPDATE (valid on SQLite and PostgreSQL): it takes a queued job, or a
running one whose lease expired because its runner died, and stamps it with a fresh random
`claim_token`. Every later write names that token, so a runner that lost its lease can no longer
touch the job (`LeaseLostError`).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from preftune.config import Settings
from preftune.errors import PreftuneError
from preftune.service import artifacts
from preftune.service.common import new_id, now
from preftune.service.events import EventType, add_event
from preftune.service.files import file_blob_path
from preftune.service.jobs import job_dir, set_status
from preftune.service.models import model_name_for
from preftune.service.secrets import decrypt_secret
from preftune.service.states import ACTIVE, JobStatus
from preftune.store.blobs import BlobStore
from preftune.store.model_cache import ModelPin
from preftune.store.models import Checkpoint, FineTunedModel, Job, JobMetric

log = logging.getLogger("preftune.runner")

# The trainer's checkpoint directories: checkpoints/step-N (temporary ones start with a dot).
STEP_DIR_RE = re.compile(r"^step-(\d+)$")


class LeaseLostError(Exception):
    """This runner no longer holds the job (its lease expired and another runner took it, or it ended)."""


@dataclass
class ClaimedJob:
    """Everything a runner needs to run one attempt of a job."""

    job_id: str
    owner_id: str
    claim_token: str
    attempt: int
    restarted: bool
    model: str
    spec: dict[str, Any]
    training_file: Path
    validation_file: Path | None
    output_dir: Path
    from_checkpoint_path: str | None
    resume_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # contracts.resources.Resources as a dict: processes per node, nodes.
    resources: dict[str, Any] = field(default_factory=dict)
    # The base model held in this machine's model cache for the attempt (remote store only).
    model_pin: ModelPin | None = None

    def release(self) -> None:
        """The attempt is over: its base model may be evicted from the cache again."""
        if self.model_pin is not None:
            self.model_pin.release()


@dataclass(frozen=True)
class Heartbeat:
    lease_held: bool
    cancel_requested: bool


# The longest wait before a retry, however many attempts failed.
MAX_RETRY_BACKOFF_SECONDS = 600.0


def retry_backoff(settings: Settings, failed_attempts: int) -> float:
    """Seconds to wait before the next attempt after `failed_attempts` failed ones (1, 2, ...)."""
    return min(settings.retry_backoff_seconds * 2 ** max(failed_attempts - 1, 0), MAX_RETRY_BACKOFF_SECONDS)


def _claimable(stamp: float) -> Any:
    return or_(
        (Job.status == JobStatus.QUEUED.value) & or_(Job.retry_after.is_(None), Job.retry_after <= stamp),
        (Job.status == JobStatus.RUNNING.value) & (Job.lease_expires_at < stamp),
    )


def reap_expired(session: Session, settings: Settings) -> list[str]:
    """End jobs whose lease expired and that must not run again: cancel requested, or out of attempts.

    Returns the ids it ended. (Expired running jobs with attempts left are left for `claim_job`.)
    """
    stamp = now()
    ended: list[str] = []
    rows = session.scalars(
        select(Job)
        .where(Job.status.in_([s.value for s in ACTIVE]), Job.lease_expires_at < stamp)
        .execution_options(populate_existing=True)
    ).all()
    for job in rows:
        if job.status == JobStatus.CANCEL_REQUESTED:
            if set_status(
                session, job, JobStatus.CANCELLED, finished_at=stamp, claim_token=None, runner_id=None
            ):
                add_event(session, job.id, EventType.JOB_CANCELLED, "Job cancelled (its runner had stopped)")
                ended.append(job.id)
        elif job.attempts >= settings.max_job_attempts:
            message = (
                f"the job's runner stopped responding (lease expired) on attempt {job.attempts} of "
                f"{settings.max_job_attempts}; giving up. Check the runner's log and the machine's memory; "
                "create the job again (optionally with from_checkpoint) to retry"
            )
            if set_status(
                session,
                job,
                JobStatus.ERROR,
                finished_at=stamp,
                claim_token=None,
                runner_id=None,
                error_message=message,
                error_code="runner_lost",
            ):
                add_event(session, job.id, EventType.JOB_ERROR, message, {"attempts": job.attempts})
                ended.append(job.id)
    session.commit()
    return ended


def claim_job(session: Session, runner_id: str, settings: Settings, blobs: BlobStore) -> ClaimedJob | None:
    """Atomically claim the oldest runnable job for `runner_id`, or return None.

    Writes `JOB_START` on a first attempt, `JOB_RESTARTED` when the job ran before (its runner died
    or the attempt failed) — then the runner resumes from the job's last checkpoint, and metrics of
    steps after that checkpoint (which will be trained again) are dropped.
    """
    reap_expired(session, settings)
    for _ in range(5):
        stamp = now()
        token = secrets.token_hex(16)
        candidate = (
            select(Job.id)
            .where(_claimable(stamp))
            .order_by(Job.created_at, Job.id)
            .limit(1)
            .scalar_subquery()
        )
        # The WHERE repeats the claimable condition: if another runner claimed the row between the
        # subquery and the update, this update matches nothing and we try again.
        result = session.execute(
            update(Job)
            .where(Job.id == candidate, _claimable(stamp))
            .values(
                status=JobStatus.RUNNING.value,
                runner_id=runner_id,
                claim_token=token,
                lease_expires_at=stamp + settings.lease_seconds,
                heartbeat_at=stamp,
                attempts=Job.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            session.commit()
            return _start_attempt(session, token, settings, blobs)
        session.rollback()
        if session.scalar(select(Job.id).where(_claimable(now())).limit(1)) is None:
            return None
    return None


def _start_attempt(session: Session, token: str, settings: Settings, blobs: BlobStore) -> ClaimedJob | None:
    # populate_existing: the session may hold this row from before the UPDATE (expire_on_commit is off).
    job = session.scalars(
        select(Job).where(Job.claim_token == token).execution_options(populate_existing=True)
    ).one()
    # Started before (a dead runner, a failed attempt or a runner shut down): resume, do not start over.
    restarted = job.started_at is not None
    session.commit()  # no transaction stays open while the files come (the lease keeper writes meanwhile)
    model_pin: ModelPin | None = None
    try:
        # Fetching the data and the latest checkpoint from a remote store can take a while: keep the lease.
        with keep_lease(lambda: Session(bind=session.get_bind()), job.id, token, settings):
            on_disk = _checkpoint_dirs(job, job_dir(settings, job.id) / "checkpoints", blobs)
            model_pin = artifacts.fetch_base_model(settings, blobs, job.model)
            training_file = file_blob_path(session, job.training_file_id, blobs)
            validation_file = (
                file_blob_path(session, job.validation_file_id, blobs) if job.validation_file_id else None
            )
            # Recorded by an API server: on this machine it is a copy fetched from the store (if remote).
            from_checkpoint = (
                str(artifacts.local_artifact(settings, blobs, job.from_checkpoint_path))
                if job.from_checkpoint_path
                else None
            )
            session.commit()
    except Exception as exc:
        # The store failed us (down past its retries, a blob missing): this attempt fails like any other
        # (retried while attempts remain) and the runner goes on with the next job.
        session.rollback()
        if model_pin is not None:
            model_pin.release()
        message, code, _ = error_fields(exc)
        log.warning("job %s: could not fetch its files from %s: %s", job.id, blobs.describe(), message)
        fail_job(
            session,
            job.id,
            token,
            settings,
            message=f"could not fetch the job's files from the blob store {blobs.describe()}: {message}",
            user_error=False,
            code=code or "storage_error",
        )
        return None
    resume_step = _record_checkpoints(session, job, on_disk)
    if job.started_at is None:
        job.started_at = now()
    if restarted:
        # Steps after the last checkpoint are trained again: their old metrics would be duplicates.
        session.execute(
            delete(JobMetric).where(JobMetric.job_id == job.id, JobMetric.step > (resume_step or 0))
        )
        where = (
            f"from the checkpoint at step {resume_step}"
            if resume_step
            else "from the start (no checkpoint yet)"
        )
        add_event(
            session,
            job.id,
            EventType.JOB_RESTARTED,
            f"Job restarted on attempt {job.attempts} of {settings.max_job_attempts}, resuming {where}",
            {"attempt": job.attempts, "resume_step": resume_step, "runner_id": job.runner_id},
        )
        job.step = resume_step or 0
    else:
        add_event(session, job.id, EventType.JOB_START, "Job started", {"runner_id": job.runner_id})
    session.commit()
    return ClaimedJob(
        job_id=job.id,
        owner_id=job.owner_id,
        claim_token=token,
        attempt=job.attempts,
        restarted=restarted,
        model=job.model,
        spec=_runner_spec(settings, job),
        training_file=training_file,
        validation_file=validation_file,
        output_dir=job_dir(settings, job.id),
        from_checkpoint_path=from_checkpoint,
        resume_step=resume_step,
        resources=dict(job.resources or {}),
        model_pin=model_pin,
    )


@contextmanager
def keep_lease(
    new_session: Callable[[], Session], job_id: str, token: str, settings: Settings
) -> Iterator[None]:
    """Heartbeat the job from a thread while the block runs (a long upload or download), so that a
    healthy runner never loses its lease to slow storage. Each beat uses a session of its own."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.heartbeat_seconds):
            try:
                with new_session() as session:
                    if not heartbeat(session, job_id, token, settings.lease_seconds).lease_held:
                        return
            except Exception:  # the next beat tries again; the lease has slack for a missed one
                log.exception("job %s: a heartbeat failed", job_id)

    thread = threading.Thread(target=beat, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _runner_spec(settings: Settings, job: Job) -> dict[str, Any]:
    """The spec the trainer runs with: the W&B key in clear, and a W&B run name by default.

    Without a `wandb_name` the run is named after the model the job will produce
    (`ft:<base>:<suffix>:<job id>`), so a W&B run is found from the job id or the suffix; the trainer
    would otherwise leave the name to W&B's random one. The stored spec keeps what the user sent.
    """
    spec = dict(job.spec)
    spec["wandb_api_key"] = decrypt_secret(settings, job.spec.get("wandb_api_key"))
    spec["wandb_name"] = job.spec.get("wandb_name") or model_name_for(job)
    return spec


def _checkpoint_dirs(job: Job, directory: Path, blobs: BlobStore) -> dict[int, Path]:
    """The job's complete checkpoints, step -> directory on this machine.

    With a remote store the bucket is the truth: a checkpoint only this machine has (its runner died
    before uploading it) is uploaded now, and the latest one is fetched here if this machine lacks it,
    so a job whose machine died resumes on another one."""
    on_disk: dict[int, Path] = {}
    if directory.is_dir():
        for child in directory.iterdir():
            match = STEP_DIR_RE.match(child.name)
            if match and child.is_dir():
                on_disk[int(match.group(1))] = child
    if blobs.remote:
        remote = artifacts.remote_checkpoint_steps(blobs, job.id)
        for step, path in on_disk.items():
            if step not in remote:
                artifacts.publish_checkpoint(blobs, job.id, path)
        for step in remote:
            on_disk.setdefault(step, directory / f"step-{step}")
        if on_disk:
            latest = max(on_disk)
            blobs.download_tree(artifacts.job_key(job.id, "checkpoints", f"step-{latest}"), on_disk[latest])
    return on_disk


def _record_checkpoints(session: Session, job: Job, on_disk: dict[int, Path]) -> int | None:
    """Record checkpoints that reached the disk (or the bucket) but not the database (the runner died in
    between); return the latest step, which is where the trainer resumes."""
    known = set(session.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job.id)))
    for step, path in on_disk.items():
        if step not in known:
            session.add(
                Checkpoint(
                    id=_checkpoint_id(job.id, step),
                    job_id=job.id,
                    step=step,
                    path=str(path),
                    created_at=now(),
                )
            )
    steps = known | set(on_disk)
    return max(steps) if steps else None


def _checkpoint_id(job_id: str, step: int) -> str:
    return f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}"


def _held(session: Session, job_id: str, token: str) -> Job:
    job = session.scalar(
        select(Job)
        .where(Job.id == job_id, Job.claim_token == token)
        .execution_options(populate_existing=True)
    )
    if job is None:
        session.rollback()
        raise LeaseLostError(f"job {job_id}: this runner's lease is gone")
    return job


def heartbeat(session: Session, job_id: str, token: str, lease_seconds: float) -> Heartbeat:
    """Extend the lease; tells whether it is still held and whether a cancel was requested."""
    stamp = now()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.claim_token == token)
        .values(lease_expires_at=stamp + lease_seconds, heartbeat_at=stamp)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return Heartbeat(lease_held=False, cancel_requested=False)
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return Heartbeat(lease_held=True, cancel_requested=status == JobStatus.CANCEL_REQUESTED)


def record_event(
    session: Session,
    job_id: str,
    token: str,
    event_type: str,
    message: str,
    data: dict[str, Any] | None = None,
) -> None:
    """A trainer event (TRAINING_START, CHECKPOINT_SAVE, EPOCH_COMPLETE, EVAL, ...)."""
    _held(session, job_id, token)
    add_event(session, job_id, event_type, message, data)
    session.commit()


def record_step(session: Session, job_id: str, token: str, metrics: dict[str, Any]) -> None:
    """One metrics line: stored per step (a re-trained step replaces its old line) and shown as progress."""
    job = _held(session, job_id, token)
    step = int(metrics.get("step", 0))
    split = str(metrics.get("split", "train"))
    session.execute(
        delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.split == split, JobMetric.step == step)
    )
    session.add(JobMetric(job_id=job_id, split=split, step=step, data=metrics, created_at=now()))
    if split == "train":
        job.step = step
        job.total_steps = _int_or(metrics.get("total_steps"), job.total_steps)
        job.epoch = _float_or(metrics.get("epoch"), job.epoch)
        job.eta_seconds = _float_or(metrics.get("eta_seconds"), None)
        job.latest_metrics = metrics
    elif split == "eval":
        job.latest_eval_metrics = metrics
    session.commit()


def _int_or(value: Any, default: int | None) -> int | None:
    return int(value) if isinstance(value, int | float) else default


def _float_or(value: Any, default: float | None) -> float | None:
    return float(value) if isinstance(value, int | float) else default


def record_checkpoint(
    session: Session,
    job_id: str,
    token: str,
    step: int,
    path: Path,
    metrics: dict[str, Any] | None = None,
    *,
    best: bool = False,
) -> None:
    """A checkpoint the trainer finished writing (re-saving a step after a restart replaces the row);
    `best`: it has the lowest validation loss so far."""
    job = _held(session, job_id, token)
    if best:
        job.best_step = step
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step))
    session.add(
        Checkpoint(
            id=_checkpoint_id(job_id, step),
            job_id=job_id,
            step=step,
            path=str(path),
            metrics=metrics,
            created_at=now(),
        )
    )
    session.commit()


def complete_job(
    session: Session,
    job_id: str,
    token: str,
    *,
    base_model_path: Path,
    adapter_path: Path | None,
    model_path: Path | None,
    merged_path: Path | None,
    steps: int,
    final_metrics: dict[str, Any] | None = None,
) -> Job:
    """The run finished: register the fine-tuned model and mark the job completed."""
    job = _held(session, job_id, token)
    name = model_name_for(job)
    stamp = now()
    if not set_status(
        session,
        job,
        JobStatus.COMPLETED,
        finished_at=stamp,
        output_name=name,
        claim_token=None,
        lease_expires_at=None,
        step=steps,
        eta_seconds=0.0,
    ):
        session.rollback()
        raise LeaseLostError(f"job {job_id} changed state while completing")
    session.add(
        FineTunedModel(
            id=new_id("ftmodel"),
            owner_id=job.owner_id,
            name=name,
            job_id=job.id,
            base_model=job.model,
            base_model_path=str(base_model_path),
            adapter_path=str(adapter_path) if adapter_path else None,
            model_path=str(model_path) if model_path else None,
            merged_path=str(merged_path) if merged_path else None,
            created_at=stamp,
        )
    )
    add_event(
        session, job.id, EventType.MODEL_REGISTERED, f"Fine-tuned model {name} is ready", {"model": name}
    )
    add_event(
        session,
        job.id,
        EventType.JOB_COMPLETE,
        f"Job completed after {steps} steps",
        {"steps": steps, "final_metrics": final_metrics or {}},
    )
    session.commit()
    return job


def cancel_finished(session: Session, job_id: str, token: str, *, last_checkpoint_step: int | None) -> Job:
    """Training stopped on a cancel request: the job is cancelled, its checkpoints kept."""
    job = _held(session, job_id, token)
    kept = f"; the checkpoint at step {last_checkpoint_step} is kept" if last_checkpoint_step else ""
    set_status(
        session, job, JobStatus.CANCELLED, finished_at=now(), claim_token=None, lease_expires_at=None
    ) or _raise_lost(session, job_id)
    add_event(
        session,
        job.id,
        EventType.JOB_CANCELLED,
        f"Job cancelled at step {job.step}{kept}",
        {"step": job.step, "last_checkpoint_step": last_checkpoint_step},
    )
    session.commit()
    return job


def _raise_lost(session: Session, job_id: str) -> bool:
    session.rollback()
    raise LeaseLostError(f"job {job_id} changed state meanwhile")


def fail_job(
    session: Session,
    job_id: str,
    token: str,
    settings: Settings,
    *,
    message: str,
    user_error: bool,
    code: str | None = None,
    param: str | None = None,
) -> Job:
    """An attempt failed. User errors end the job (`user_error`, no retry); other failures are retried
    (back to `queued`) until `max_job_attempts`, then the job ends in `error` with the cause."""
    job = _held(session, job_id, token)
    stamp = now()
    if job.status == JobStatus.CANCEL_REQUESTED:
        return cancel_finished(session, job_id, token, last_checkpoint_step=None)
    if user_error:
        ok = set_status(
            session,
            job,
            JobStatus.USER_ERROR,
            finished_at=stamp,
            claim_token=None,
            lease_expires_at=None,
            error_message=message,
            error_code=code,
            error_param=param,
        )
        ok or _raise_lost(session, job_id)
        add_event(session, job.id, EventType.JOB_USER_ERROR, message, {"code": code, "param": param})
    elif job.attempts < settings.max_job_attempts:
        # Not at once: what failed the attempt (a full disk, a dead node) rarely mends in a second.
        wait = retry_backoff(settings, job.attempts)
        ok = set_status(
            session,
            job,
            JobStatus.QUEUED,
            claim_token=None,
            lease_expires_at=None,
            runner_id=None,
            error_message=message,
            error_code=code,
            retry_after=stamp + wait,
        )
        ok or _raise_lost(session, job_id)
        add_event(
            session,
            job.id,
            EventType.JOB_RETRY,
            f"Attempt {job.attempts} of {settings.max_job_attempts} failed: {message}; "
            f"the job will be retried in {wait:.0f} s",
            {"attempt": job.attempts, "code": code, "retry_in_seconds": wait},
        )
    else:
        final = f"failed after {job.attempts} attempts: {message}"
        ok = set_status(
            session,
            job,
            JobStatus.ERROR,
            finished_at=stamp,
            claim_token=None,
            lease_expires_at=None,
            error_message=final,
            error_code=code or "training_failed",
            error_param=param,
        )
        ok or _raise_lost(session, job_id)
        add_event(session, job.id, EventType.JOB_ERROR, final, {"attempts": job.attempts, "code": code})
    session.commit()
    return job


def release_job(session: Session, job_id: str, token: str, reason: str) -> None:
    """The runner is shutting down cleanly: put the job back in the queue without spending an attempt."""
    try:
        job = _held(session, job_id, token)
    except LeaseLostError:
        return
    if job.status == JobStatus.CANCEL_REQUESTED:
        cancel_finished(session, job_id, token, last_checkpoint_step=None)
        return
    if set_status(
        session,
        job,
        JobStatus.QUEUED,
        claim_token=None,
        lease_expires_at=None,
        runner_id=None,
        attempts=max(job.attempts - 1, 0),
    ):
        add_event(session, job.id, EventType.JOB_RETRY, f"Runner stopped ({reason}); job queued again")
    session.commit()


def error_fields(exc: BaseException) -> tuple[str, str | None, str | None]:
    """(message, code, param) of an exception, for `fail_job`."""
    if isinstance(exc, PreftuneError):
        return exc.message, exc.code, exc.param
    return f"{type(exc).__name__}: {exc}", None, None
