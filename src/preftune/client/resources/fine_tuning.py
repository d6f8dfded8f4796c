"""`client.fine_tuning`: create, follow, cancel and download fine-tuning jobs."""

from __future__ import annotations

import builtins
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from preftune.client._base import HTTPTransport
from preftune.client.errors import APIConnectionError
from preftune.client.pagination import Page
from preftune.client.types import Checkpoint, FineTuneJob, JobEvent, MetricPoint

DOWNLOAD_RESUME_ATTEMPTS = 5


class FineTuning:
    def __init__(self, transport: HTTPTransport) -> None:
        self._t = transport

    def create(
        self,
        *,
        training_file: str,
        model: str,
        validation_file: str | None = None,
        idempotency_key: str | None = None,
        resources: dict[str, Any] | None = None,
        **hyperparameters: Any,
    ) -> FineTuneJob:
        """Queue a job. `hyperparameters` are `TrainingSpec`'s knobs by name (`lora=True`,
        `training_method="dpo"`, `dpo_beta=0.2`, `rpo_alpha=1.0`, `simpo_gamma=1.0`, `n_epochs`, ...);
        the server refuses an unknown or out-of-range knob with an `InvalidRequestError` naming it.
        `resources={"processes_per_node": 2}` trains on two processes; `"launcher": "ray"` on the
        server's Ray cluster (and `nodes` > 1 with it); `"strategy": "fsdp"` shards the model (LoRA's
        frozen base too). Retries reuse one `Idempotency-Key` (pass your own to make a create safe across
        processes)."""
        body: dict[str, Any] = {"training_file": training_file, "model": model, **hyperparameters}
        if validation_file is not None:
            body["validation_file"] = validation_file
        if resources is not None:
            body["resources"] = resources
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return FineTuneJob.model_validate(self._t.request("POST", "/fine-tunes", json=body, headers=headers))

    def retrieve(self, job_id: str) -> FineTuneJob:
        return FineTuneJob.model_validate(self._t.request("GET", f"/fine-tunes/{job_id}"))

    def list(
        self, *, limit: int | None = None, after: str | None = None, status: str | None = None
    ) -> Page[FineTuneJob]:
        """Your jobs, newest first (only those in `status`, if given); iterate the page to walk every
        later page too."""
        body = self._t.request(
            "GET", "/fine-tunes", params={"limit": limit, "after": after, "status": status}
        )
        return Page(
            [FineTuneJob.model_validate(item) for item in body["data"]],
            bool(body.get("has_more")),
            lambda cursor: self.list(limit=limit, after=cursor, status=status),
        )

    def cancel(self, job_id: str) -> FineTuneJob:
        """Ask the job to stop; training stops within seconds and keeps its last checkpoint."""
        return FineTuneJob.model_validate(self._t.request("POST", f"/fine-tunes/{job_id}/cancel"))

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[JobEvent]:
        """The job's events, oldest first; `after` is the id of the last event you have seen."""
        body = self._t.request("GET", f"/fine-tunes/{job_id}/events", params={"after": after, "limit": limit})
        return Page(
            [JobEvent.model_validate(item) for item in body["data"]],
            bool(body.get("has_more")),
            lambda cursor: self.list_events(job_id, after=cursor, limit=limit),
        )

    def list_metrics(self, job_id: str, *, after_step: int | None = None) -> builtins.list[MetricPoint]:
        """Per-step training metrics (TRL's names), in step order."""
        body = self._t.request("GET", f"/fine-tunes/{job_id}/metrics", params={"after_step": after_step})
        return [MetricPoint.model_validate(item) for item in body["data"]]

    def list_checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        body = self._t.request("GET", f"/fine-tunes/{job_id}/checkpoints")
        return [Checkpoint.model_validate(item) for item in body["data"]]

    def download(
        self,
        job_id: str,
        output_dir: str | Path,
        *,
        artifact: str = "adapter",
        step: int | None = None,
        on_progress: Callable[[int, int | None], None] | None = None,
    ) -> Path:
        """Download the adapter (or `merged` model, the `checkpoint` at `step`, or the `best` checkpoint)
        into `output_dir`.

        The tar is streamed to disk; an interrupted transfer resumes with an HTTP Range request.
        `on_progress(bytes_done, bytes_total)` is called as data arrives. Returns `output_dir`, which
        then holds the files directly (e.g. `adapter_config.json`), ready for `PeftModel.from_pretrained`.
        """
        out = Path(output_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        part = out / f".{job_id}-{artifact}{'' if step is None else f'-{step}'}.tar.part"
        params = {"artifact": artifact, "step": step}
        total: int | None = None
        for attempt in range(DOWNLOAD_RESUME_ATTEMPTS):
            done = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={done}-"} if done else None
            try:
                with self._t.stream(
                    f"/fine-tunes/{job_id}/download", params=params, headers=headers
                ) as response:
                    if response.status_code == 200 and done:
                        done = 0  # the server ignored the Range: start over
                    total = _total_size(response, done)
                    with part.open("ab" if done else "wb") as handle:
                        for chunk in response.iter_bytes(1 << 20):
                            handle.write(chunk)
                            done += len(chunk)
                            if on_progress:
                                on_progress(done, total)
                if total is None or done >= total:
                    break
            except APIConnectionError:
                if attempt + 1 == DOWNLOAD_RESUME_ATTEMPTS:
                    raise
                time.sleep(min(2**attempt, 8))
        with tarfile.open(part) as archive:
            archive.extractall(out, filter="data")
        os.unlink(part)
        return out

    def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = 2.0,
        timeout: float | None = None,
        on_update: Callable[[FineTuneJob], None] | None = None,
    ) -> FineTuneJob:
        """Poll until the job is completed, failed or cancelled, and return it.

        Raises `TimeoutError` after `timeout` seconds (the job keeps running on the server).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.retrieve(job_id)
            if on_update:
                on_update(job)
            if job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:g}s")
            time.sleep(poll_interval)

    def spec_schema(self) -> dict[str, Any]:
        """The JSON schema of every hyperparameter (defaults, ranges, help), as the server knows it."""
        body: dict[str, Any] = self._t.request("GET", "/fine-tunes/spec")
        return body


def _total_size(response: Any, already: int) -> int | None:
    content_range = response.headers.get("content-range", "")
    if "/" in content_range:
        size = content_range.rsplit("/", 1)[1]
        return int(size) if size.isdigit() else None
    length = response.headers.get("content-length")
    return already + int(length) if length and length.isdigit() else None


__all__ = ["FineTuning"]
