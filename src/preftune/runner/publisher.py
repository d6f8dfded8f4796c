"""`CheckpointPublisher`: a job's checkpoints uploaded to a remote blob store off the runner's loop.

The runner's loop forwards the training child's events and metrics and heartbeats the lease; an
upload of a large checkpoint inline would stall all of it for as long as the bucket takes. So the
loop hands each saved checkpoint to this publisher and goes on. One worker thread takes them in
order, one at a time: it uploads a checkpoint, then records it (its row and its `CHECKPOINT_SAVE`
event, through `record`), and only then starts the next. So:

- a checkpoint is announced as resumable (its row) only once the bucket has it, and never before an
  older one: the rows appear in step order;
- `wait()` returns once everything handed over is uploaded and recorded; the runner calls it before
  it marks the job done (and before it releases or cancels it), so no row is missing a checkpoint
  the trainer wrote;
- the first failure is kept (`error`), and what comes after it is dropped: a later checkpoint
  recorded past a missing earlier one would be fine to resume from, but the attempt fails anyway
  (the runner stops the child and the job is retried), so the simple rule is the clear one.

With the local store nothing is uploaded and the work is done inline, exactly as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune.service import artifacts
from preftune.store.blobs import BlobStore

log = logging.getLogger("preftune.runner.publisher")


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint the trainer finished writing, as its event announced it."""

    step: int
    path: Path
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None

    @property
    def best(self) -> bool:
        return bool(self.data.get("best"))


class CheckpointPublisher:
    """Uploads then records the checkpoints handed to `submit`, in order, on one worker thread."""

    def __init__(
        self,
        blobs: BlobStore,
        job_id: str,
        record: Callable[[SavedCheckpoint], None],
        *,
        background: bool | None = None,
    ) -> None:
        self.blobs = blobs
        self.job_id = job_id
        self.record = record
        self.background = blobs.remote if background is None else background
        self.error: BaseException | None = None
        self.last_step: int | None = None
        self._queue: queue.Queue[SavedCheckpoint | None] = queue.Queue()
        self._abandoned = threading.Event()
        self._thread: threading.Thread | None = None
        if self.background:
            self._thread = threading.Thread(target=self._work, name=f"publish-{job_id}", daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        """Checkpoints handed over and not yet uploaded and recorded."""
        return self._queue.unfinished_tasks

    def submit(self, checkpoint: SavedCheckpoint) -> None:
        if not self.background:  # nothing slow to wait for: done here, a failure raised as it comes
            artifacts.publish_checkpoint(self.blobs, self.job_id, checkpoint.path)
            self.record(checkpoint)
            self.last_step = checkpoint.step
            return
        self._queue.put(checkpoint)

    def wait(self) -> BaseException | None:
        """Block until every checkpoint handed over is uploaded and recorded (or dropped after a
        failure); returns the first failure, if any."""
        if self.background:
            self._queue.join()
        return self.error

    def close(self, *, abandon: bool = False) -> None:
        """End the worker; `abandon`: drop what is still queued (the attempt lost its lease or broke).
        An upload under way finishes in the background; recording it then fails on the lost lease."""
        if abandon:
            self._abandoned.set()
        if self._thread is not None:
            self._queue.put(None)
            if not abandon:
                self._thread.join()

    def _work(self) -> None:
        while True:
            checkpoint = self._queue.get()
            try:
                if checkpoint is None:
                    return
                self._publish(checkpoint)
            finally:
                self._queue.task_done()

    def _publish(self, checkpoint: SavedCheckpoint) -> None:
        if self.error is not None or self._abandoned.is_set():
            return
        try:
            artifacts.publish_checkpoint(self.blobs, self.job_id, checkpoint.path)
            self.record(checkpoint)
        except Exception as exc:
            log.error(
                "job %s: could not publish the checkpoint at step %d: %s", self.job_id, checkpoint.step, exc
            )
            self.error = exc
            return
        self.last_step = checkpoint.step
