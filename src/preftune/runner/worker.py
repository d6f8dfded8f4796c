"""`Runner`: the loop that claims jobs and runs each attempt's training in a child process.

One runner runs one job at a time. While the child trains, the runner forwards its events and
metrics to the service, renews its lease every `heartbeat_seconds`, and checks about once a
second for a cancel request. If the runner dies, its lease expires after `lease_seconds` and
another runner resumes the job from its last checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_module
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.config import Settings
from preftune.runner.child import LOG_FILE, child_main, evaluation_main
from preftune.runner.publisher import CheckpointPublisher, SavedCheckpoint
from preftune.service import artifacts, evaluations, runs
from preftune.service.bootstrap import open_blobs
from preftune.service.events import EventType
from preftune.store.blobs import BlobStore
from preftune.store.db import Database, open_database

log = logging.getLogger("preftune.runner")

# How often the runner looks for a cancel request while a job trains.
CANCEL_POLL_SECONDS = 1.0
# How long a child may take to stop after being asked, before it is killed.
STOP_GRACE_SECONDS = 20.0
# Wait between looks at an empty queue.
IDLE_POLL_SECONDS = 1.0
# How often a runner started by `preftune serve` checks that the server is still alive.
ORPHAN_POLL_SECONDS = 1.0


@dataclass
class AttemptOutcome:
    """How one attempt ended, from the runner's point of view."""

    kind: str  # completed | cancelled | released | failed | user_error | retry | lease_lost
    job_id: str


def default_runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Runner:
    """Claims and runs jobs until `stop()` is called (or a signal arrives, with `install_signal_handlers`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        runner_id: str | None = None,
        db: Database | None = None,
        blobs: BlobStore | None = None,
        idle_poll_seconds: float = IDLE_POLL_SECONDS,
    ) -> None:
        self.settings = settings
        self.runner_id = runner_id or default_runner_id()
        self.db = db or open_database(settings)
        self.blobs = blobs or open_blobs(settings, self.db)
        self.idle_poll_seconds = idle_poll_seconds
        self._stopping = threading.Event()
        self._mp = mp.get_context("spawn")
        self.current_child: Any = None

    # --- control ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the runner to stop: a running job is stopped and put back in the queue."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            log.info("runner %s: signal %d, stopping", self.runner_id, signum)
            self.stop()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)

    # --- the loop -----------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("runner %s started (database %s)", self.runner_id, self.db.engine.url.render_as_string())
        while not self.stopping:
            outcome = self.run_once()
            if outcome is None and self.run_evaluation_once() is None:
                self._stopping.wait(self.idle_poll_seconds)
        log.info("runner %s stopped", self.runner_id)

    def run_once(self) -> AttemptOutcome | None:
        """Claim one job and run one attempt of it; None when nothing was runnable."""
        with self.db.session() as session:
            claimed = runs.claim_job(session, self.runner_id, self.settings, self.blobs)
        if claimed is None:
            return None
        log.info("runner %s: job %s attempt %d", self.runner_id, claimed.job_id, claimed.attempt)
        try:
            return self._run_attempt(claimed)
        except runs.LeaseLostError:
            log.warning("runner %s: lost the lease on job %s", self.runner_id, claimed.job_id)
            return AttemptOutcome("lease_lost", claimed.job_id)
        finally:
            claimed.release()  # its base model may leave the model cache again

    # --- evaluations ----------------------------------------------------------------------------
    def run_evaluation_once(self) -> str | None:
        """Claim one queued evaluation and run it in a child process; its final status, or None when
        there was none. (Jobs come first: `run_forever` looks for an evaluation only when idle.)"""
        with self.db.session() as session:
            claimed = evaluations.claim_evaluation(session, self.runner_id, self.blobs)
            if claimed is None:
                return None
            row, data_path = claimed
            payload = {
                "model": row.model,
                "file_id": row.file_id,
                "file": str(data_path),
                "model_path": row.model_path,
                "base_model_path": row.base_model_path,
                "params": dict(row.params),
                "models_dir": str(self.settings.models_dir),
            }
            evaluation_id = row.id
        log.info("runner %s: evaluation %s", self.runner_id, evaluation_id)
        messages = self._mp.Queue()
        child = self._mp.Process(
            target=evaluation_main, args=(payload, messages), name=f"preftune-eval-{evaluation_id}"
        )
        child.start()
        outcome: tuple[str, dict[str, Any]] | None = None
        try:
            while outcome is None:
                try:
                    kind, body = messages.get(timeout=0.2)
                except queue_module.Empty:
                    if not child.is_alive():
                        break
                    if self.stopping:
                        child.kill()
                        break
                    continue
                if kind == "progress":
                    self._write(evaluations.record_progress, evaluation_id, body["done"], body["total"])
                else:
                    outcome = (kind, body)
        finally:
            child.join(STOP_GRACE_SECONDS)
            if child.is_alive():
                child.kill()
                child.join()
            messages.close()
        with self.db.session() as session:
            if outcome is not None and outcome[0] == "result":
                evaluations.complete_evaluation(session, evaluation_id, outcome[1])
                return "completed"
            error = outcome[1] if outcome is not None else {}
            message = error.get("message") or f"the evaluation process ended (exit code {child.exitcode})"
            evaluations.fail_evaluation(session, evaluation_id, message, error.get("code"))
            return "error"

    # --- one attempt --------------------------------------------------------------------------
    def _payload(self, claimed: runs.ClaimedJob) -> dict[str, Any]:
        checkpoints = claimed.output_dir / "checkpoints"
        has_checkpoint = checkpoints.is_dir() and any(
            p.name.startswith("step-") for p in checkpoints.iterdir()
        )
        resume = claimed.restarted and has_checkpoint
        if not resume and claimed.output_dir.exists():
            # Nothing to resume from: start clean rather than mix with a dead attempt's partial output
            # (the log of earlier attempts is kept: it says why they ended).
            for entry in claimed.output_dir.iterdir():
                if entry.name == LOG_FILE:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        claimed.output_dir.mkdir(parents=True, exist_ok=True)
        return {
            "job_id": claimed.job_id,
            "spec": claimed.spec,
            "model": claimed.model,
            "training_file": str(claimed.training_file),
            "validation_file": str(claimed.validation_file) if claimed.validation_file else None,
            "output_dir": str(claimed.output_dir),
            "models_dir": str(self.settings.models_dir),
            "from_checkpoint_path": claimed.from_checkpoint_path,
            "resume": resume,
            "device": self.settings.device,
            "peak_flops": self.settings.peak_flops,
            "resources": claimed.resources,
            "collective_timeout_s": self.settings.collective_timeout_s,
            "ray_address": self.settings.ray_address,
        }

    def _run_attempt(self, claimed: runs.ClaimedJob) -> AttemptOutcome:
        job_id, token = claimed.job_id, claimed.claim_token
        messages = self._mp.Queue()
        stop_event = self._mp.Event()
        child = self._mp.Process(
            target=child_main,
            args=(self._payload(claimed), messages, stop_event, os.getpid()),
            name=f"preftune-train-{job_id}",
        )
        child.start()
        self.current_child = child
        # Checkpoints go to the bucket off this loop, which keeps forwarding events and heartbeating.
        publisher = CheckpointPublisher(
            self.blobs, job_id, lambda saved: self._record_checkpoint(job_id, token, saved)
        )
        outcome: tuple[str, dict[str, Any]] | None = None
        cancel_requested = False
        upload_failed = False
        releasing = False
        lease_lost = False
        stop_deadline: float | None = None
        next_beat = time.monotonic() + self.settings.heartbeat_seconds
        next_cancel_check = time.monotonic() + CANCEL_POLL_SECONDS
        latest_metrics: dict[str, Any] | None = None
        finished = False
        try:
            while True:
                try:
                    kind, body = messages.get(timeout=0.2)
                except queue_module.Empty:
                    kind, body = "", {}
                if kind in ("result", "error"):
                    outcome = (kind, body)
                elif kind == "step":
                    latest_metrics = body
                    self._write(runs.record_step, job_id, token, body)
                elif kind == "event":
                    self._forward_event(job_id, token, body, latest_metrics, publisher)

                clock = time.monotonic()
                if clock >= next_cancel_check or clock >= next_beat:
                    next_cancel_check = clock + CANCEL_POLL_SECONDS
                    if clock >= next_beat:
                        next_beat = clock + self.settings.heartbeat_seconds
                        with self.db.session() as session:
                            beat = runs.heartbeat(session, job_id, token, self.settings.lease_seconds)
                        lease_lost = not beat.lease_held
                        cancel_requested = cancel_requested or beat.cancel_requested
                    else:
                        cancel_requested = cancel_requested or self._cancel_requested(job_id)
                if self.stopping and not cancel_requested:
                    releasing = True
                if publisher.error is not None:
                    lease_lost = lease_lost or isinstance(publisher.error, runs.LeaseLostError)
                    upload_failed = True
                if (cancel_requested or releasing or lease_lost or upload_failed) and not stop_event.is_set():
                    stop_event.set()
                    stop_deadline = clock + STOP_GRACE_SECONDS
                if stop_deadline is not None and clock > stop_deadline and child.is_alive():
                    log.warning("job %s: the training process did not stop in time; killing it", job_id)
                    child.kill()
                if lease_lost:
                    child.join(STOP_GRACE_SECONDS)
                    raise runs.LeaseLostError(job_id)
                if outcome is not None or not child.is_alive():
                    if outcome is None:
                        outcome = self._drain_for_outcome(messages, job_id, token, latest_metrics, publisher)
                    break
            # Every checkpoint the trainer wrote is in the bucket and recorded before the job ends in
            # any way (completed, released to another runner, cancelled, failed).
            if publisher.pending:
                log.info("job %s: waiting for %d checkpoint upload(s)", job_id, publisher.pending)
            with runs.keep_lease(self.db.sessionmaker, job_id, token, self.settings):
                error = publisher.wait()
            if isinstance(error, runs.LeaseLostError):
                raise error
            if error is not None and not cancel_requested:
                outcome = (
                    "error",
                    {
                        "message": f"could not upload a checkpoint to the blob store {self.blobs.describe()}: "
                        f"{error}",
                        "code": "storage_error",
                        "user_error": False,
                    },
                )
            finished = True
        finally:
            publisher.close(abandon=not finished)
            child.join(STOP_GRACE_SECONDS)
            if child.is_alive():
                child.kill()
                child.join()
            self.current_child = None
            messages.close()
        last_checkpoint = publisher.last_step if publisher.last_step is not None else claimed.resume_step
        return self._finish(claimed, outcome, child.exitcode, cancel_requested, releasing, last_checkpoint)

    def _drain_for_outcome(
        self,
        messages: Any,
        job_id: str,
        token: str,
        latest_metrics: dict[str, Any] | None,
        publisher: CheckpointPublisher,
    ) -> tuple[str, dict[str, Any]] | None:
        """The child exited: read what it sent last (the queue's feeder may still be flushing)."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                kind, body = messages.get(timeout=0.2)
            except queue_module.Empty:
                continue
            if kind in ("result", "error"):
                return kind, body
            if kind == "step":
                self._write(runs.record_step, job_id, token, body)
            elif kind == "event":
                self._forward_event(job_id, token, body, latest_metrics, publisher)
        return None

    def _write(self, func: Any, *args: Any) -> None:
        with self.db.session() as session:
            func(session, *args)

    def _cancel_requested(self, job_id: str) -> bool:
        from sqlalchemy import select

        from preftune.service.states import JobStatus
        from preftune.store.models import Job

        with self.db.session() as session:
            return session.scalar(select(Job.status).where(Job.id == job_id)) == JobStatus.CANCEL_REQUESTED

    def _forward_event(
        self,
        job_id: str,
        token: str,
        body: dict[str, Any],
        latest_metrics: dict[str, Any] | None,
        publisher: CheckpointPublisher,
    ) -> None:
        """Record a trainer event; a saved checkpoint goes to `publisher`, which records it once uploaded."""
        event_type = str(body.get("type"))
        data = dict(body.get("data") or {})
        if event_type not in EventType.__members__:
            log.warning("job %s: ignoring unknown trainer event %s", job_id, event_type)
            return
        message = str(body.get("message", ""))
        if event_type == EventType.CHECKPOINT_SAVE and "step" in data and data.get("path"):
            # In the bucket before its row and event exist: a recorded checkpoint is one any machine can
            # resume from. The upload runs off this loop; see `CheckpointPublisher`.
            publisher.submit(
                SavedCheckpoint(int(data["step"]), Path(str(data["path"])), message, data, latest_metrics)
            )
            return
        with self.db.session() as session:
            runs.record_event(session, job_id, token, event_type, message, data)

    def _record_checkpoint(self, job_id: str, token: str, saved: SavedCheckpoint) -> None:
        with self.db.session() as session:
            runs.record_checkpoint(
                session, job_id, token, saved.step, saved.path, saved.metrics, best=saved.best
            )
            runs.record_event(session, job_id, token, EventType.CHECKPOINT_SAVE, saved.message, saved.data)

    def _finish(
        self,
        claimed: runs.ClaimedJob,
        outcome: tuple[str, dict[str, Any]] | None,
        exitcode: int | None,
        cancel_requested: bool,
        releasing: bool,
        last_checkpoint: int | None,
    ) -> AttemptOutcome:
        job_id, token = claimed.job_id, claimed.claim_token
        completed = outcome is not None and outcome[0] == "result" and outcome[1]["status"] == "completed"
        if completed:
            # The outputs reach the bucket before the job is completed: a completed job's artifacts exist.
            with runs.keep_lease(self.db.sessionmaker, job_id, token, self.settings):
                artifacts.publish_outputs(self.blobs, job_id, claimed.output_dir)
        else:
            try:
                artifacts.publish_log(self.blobs, job_id, claimed.output_dir)
            except Exception:  # the log is for reading; its upload failing must not change the outcome
                log.exception("job %s: could not upload the training log", job_id)
        with self.db.session() as session:
            if completed and outcome is not None:
                result = outcome[1]
                from preftune.contracts.base_models import resolve_model

                runs.complete_job(
                    session,
                    job_id,
                    token,
                    base_model_path=resolve_model(claimed.model, self.settings.models_dir),
                    adapter_path=_path(result.get("adapter_path")),
                    model_path=_path(result.get("model_path")),
                    merged_path=_path(result.get("merged_path")),
                    steps=int(result["steps"]),
                    final_metrics=result.get("final_metrics"),
                )
                return AttemptOutcome("completed", job_id)
            if cancel_requested or (self._cancel_requested(job_id) and outcome is not None):
                runs.cancel_finished(session, job_id, token, last_checkpoint_step=last_checkpoint)
                return AttemptOutcome("cancelled", job_id)
            if releasing and (outcome is None or outcome[0] == "result"):
                runs.release_job(session, job_id, token, "the runner is shutting down")
                return AttemptOutcome("released", job_id)
            if outcome is not None and outcome[0] == "error":
                error = outcome[1]
                log.error("job %s failed: %s\n%s", job_id, error["message"], error.get("traceback", ""))
                job = runs.fail_job(
                    session,
                    job_id,
                    token,
                    self.settings,
                    message=error["message"],
                    user_error=bool(error.get("user_error")),
                    code=error.get("code"),
                    param=error.get("param"),
                )
                return AttemptOutcome(job.status if job.status != "queued" else "retry", job_id)
            message = (
                f"the training process stopped unexpectedly (exit code {exitcode}); "
                "it may have run out of memory: lower batch_size or max_length "
                f"(log: {claimed.output_dir / LOG_FILE})"
            )
            if outcome is not None:  # a "stopped" result nobody asked for
                message = "training stopped before the end without a cancel request"
            job = runs.fail_job(
                session,
                job_id,
                token,
                self.settings,
                message=message,
                user_error=False,
                code="training_crashed",
            )
            return AttemptOutcome(job.status if job.status != "queued" else "retry", job_id)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def stop_when_orphaned(runner: Runner, parent_pid: int, poll_seconds: float = ORPHAN_POLL_SECONDS) -> None:
    """Stop `runner` once the process `parent_pid` is no longer its parent (it died).

    `preftune serve` stops its runners when it stops, but not when it is killed outright (SIGKILL,
    the OOM killer): a runner left behind would go on claiming jobs for a server nobody runs, and
    the next `preftune serve` would start runners beside it. It stops instead, putting a running
    job back in the queue, where the next server's runners resume it from its last checkpoint.
    """
    while not runner.stopping:
        if os.getppid() != parent_pid:
            log.warning("runner %s: its server (pid %d) is gone; stopping", runner.runner_id, parent_pid)
            runner.stop()
            return
        time.sleep(poll_seconds)


def run_runner_process(settings_data: dict[str, Any], index: int = 0, parent_pid: int | None = None) -> None:
    """Entry point of a runner process started by `preftune serve` (spawned; settings passed as data).

    `parent_pid` is the server's pid: the runner stops when that process dies (see `stop_when_orphaned`).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**settings_data)
    runner = Runner(
        settings, runner_id=f"{default_runner_id()}:r{index}", db=Database(settings.resolved_database_url)
    )
    runner.install_signal_handlers()
    if parent_pid is not None:
        threading.Thread(
            target=stop_when_orphaned, args=(runner, parent_pid), name="orphan-watch", daemon=True
        ).start()
    try:
        runner.run_forever()
    finally:
        runner.db.dispose()
