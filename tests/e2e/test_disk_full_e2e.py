"""A full disk, for real: a small tmpfs (`helpers.faults.small_disk`) under the real server's blob
store, job directories or SQLite database.

- An upload that fills the disk is a 507 `insufficient_storage` in the error envelope; no staged
  part, blob or file record is left, the server goes on serving, and the same upload (same
  Idempotency-Key) succeeds once space is freed.
- A checkpoint write that fills the disk: no checkpoint under a real name is partial; the attempt
  fails with `insufficient_storage`, saying which checkpoint is the last complete one. With space
  back, the retry resumes from that checkpoint and completes; without, the job ends in `error` with
  that clear cause. Nothing acknowledged (the file, the job, its events and metrics) is lost.
- The SQLite database's disk full: a create is a 507 (not a 500), nothing is half-recorded, reads
  still answer, and the create's retry works once space is freed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.data import first_lines
from helpers.faults import MiB, fill_disk, small_disk
from helpers.postgres import create_database
from helpers.server import ServeProcess
from preftune.training.checkpoint import STATE_FILE, list_checkpoints

pytestmark = pytest.mark.e2e

# 16 pairs, 2 a step, 6 steps: checkpoints at steps 3 and 6 (each ~3.7 MB: the tokenizer is most of it).
STEPS = 6
JOB = {
    "batch_size": 2,
    "max_length": 96,
    "lora_r": 4,
    "lora_alpha": 8,
    "max_steps": STEPS,
    "n_checkpoints": 2,
}
# Room for a few metrics lines and log lines, not for a checkpoint.
LEAVE = 256 * 1024


def _payload(orca_path: Path, size: int, tag: str) -> bytes:
    lines = [line + "\n" for line in orca_path.read_text(encoding="utf-8").splitlines()]
    out: list[str] = []
    total = 0
    while total < size:
        for line in lines:
            out.append(line)
            total += len(line)
    pair = {
        "input": {"messages": [{"role": "user", "content": f"which upload? {tag}"}]},
        "preferred_output": [{"role": "assistant", "content": tag}],
        "non_preferred_output": [{"role": "assistant", "content": "no idea"}],
    }
    return ("".join(out) + json.dumps(pair) + "\n").encode()


def _assert_disk_full(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "server_error" and error["code"] == "insufficient_storage", error
    assert "disk is full" in error["message"], error
    return dict(error)


def _staged_and_blobs(blobs: Path) -> tuple[list[str], list[str]]:
    staged = sorted(p.name for p in (blobs / "tmp").glob("*")) if (blobs / "tmp").is_dir() else []
    return staged, sorted(p.name for p in blobs.glob("??/*"))


def test_an_upload_that_fills_the_disk_is_507_and_leaves_nothing(tmp_path: Path, orca_path: Path) -> None:
    # The server's temporary directory (where the multipart parser spools an upload) on its own disk.
    spool = tmp_path / "spool"
    server = ServeProcess(home=tmp_path / "home", workers=0, env={"TMPDIR": str(spool)})
    blobs = server.home / "blobs"
    with small_disk(blobs, 8 * MiB), small_disk(spool, 16 * MiB):
        server.start()
        try:
            http = server.api()
            seed_bytes = _payload(orca_path, 64 * 1024, "seed")
            seed = http.post("/files", files={"file": ("seed.jsonl", seed_bytes)}).json()
            assert seed["status"] == "processed"
            before = _staged_and_blobs(blobs)

            # Larger than the whole disk.
            big = _payload(orca_path, 12 * MiB, "big")
            error = _assert_disk_full(http.post("/files", files={"file": ("big.jsonl", big)}))
            assert error["param"] == "file"
            assert _staged_and_blobs(blobs) == before

            # The disk is full of something else; the upload is keyed, as a careful client does.
            filler = fill_disk(blobs, leave=LEAVE)
            medium = _payload(orca_path, 2 * MiB, "medium")
            keyed = {"Idempotency-Key": "medium-upload-1"}
            for _ in range(2):  # a client retrying while the disk is still full gets the same answer
                _assert_disk_full(http.post("/files", files={"file": ("m.jsonl", medium)}, headers=keyed))
            assert _staged_and_blobs(blobs) == before
            listed = http.get("/files").json()["data"]
            assert [f["id"] for f in listed] == [seed["id"]], listed  # no record of the refused upload
            # Still serving, and what was acknowledged is intact.
            assert (
                hashlib.sha256(http.get(f"/files/{seed['id']}/content").content).hexdigest() == seed["sha256"]
            )

            filler.unlink()
            # The spool disk full: the body cannot even be read. A 507 too, not FastAPI's 400.
            spool_filler = fill_disk(spool, leave=LEAVE)
            _assert_disk_full(http.post("/files", files={"file": ("m.jsonl", medium)}, headers=keyed))
            assert _staged_and_blobs(blobs) == before
            spool_filler.unlink()

            retried = http.post("/files", files={"file": ("m.jsonl", medium)}, headers=keyed)
            assert retried.status_code == 200, retried.text
            got = retried.json()
            assert got["status"] == "processed" and got["sha256"] == hashlib.sha256(medium).hexdigest()
            content = http.get(f"/files/{got['id']}/content").content
            assert content == medium
            assert len(http.get("/files").json()["data"]) == 2
            staged, placed = _staged_and_blobs(blobs)
            assert staged == [] and placed == sorted([seed["sha256"], got["sha256"]])
        finally:
            server.stop()


def _events(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/fine-tunes/{job_id}/events", params={"limit": 1000}).json()["data"])


def _stopped_trainers(log: Path) -> list[int]:
    """Pids of trainers the `stop` fault has paused (each says so in the job's log), still stopped."""
    pids = []
    text = log.read_text(errors="replace") if log.is_file() else ""
    for line in text.splitlines():
        if line.startswith("preftune.faults: stop at checkpoint.after_rename"):
            pid = int(line.split()[-1])
            with suppress(FileNotFoundError, IndexError):
                if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("T"):
                    pids.append(pid)
    return pids


def _wait(
    http: httpx.Client, job_id: str, done: Any, what: str, log: Path | None = None, timeout: float = 600
) -> list[dict[str, Any]]:
    """Poll the job's events until `done(events)`; with `log`, let every paused trainer go on."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in _stopped_trainers(log) if log else []:
            os.kill(pid, signal.SIGCONT)  # a later attempt stops at its first checkpoint too
        events = _events(http, job_id)
        if done(events):
            return events
        assert time.monotonic() < deadline, f"no {what} within {timeout}s: {[e['type'] for e in events]}"
        time.sleep(0.1)


def _first_stopped_trainer(log: Path, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while not (pids := _stopped_trainers(log)):
        assert time.monotonic() < deadline, f"the trainer never stopped at its first checkpoint:\n{log}"
        time.sleep(0.1)
    return pids[0]


def _full_after_first_checkpoint(
    server: ServeProcess, orca_path: Path, model: Path, tmp_path: Path
) -> tuple[httpx.Client, str, Path, Path]:
    """Start a job, pause its trainer right after the step-3 checkpoint, fill the job disk, let it go on."""
    http = server.api()
    small = first_lines(orca_path, tmp_path / "orca-16.jsonl", 16)
    with small.open("rb") as handle:
        file = http.post("/files", files={"file": ("orca.jsonl", handle)}).json()
    job = http.post("/fine-tunes", json={"training_file": file["id"], "model": str(model), **JOB}).json()
    job_dir = server.home / "jobs" / job["id"]
    pid = _first_stopped_trainer(job_dir / "train.log")
    filler = fill_disk(server.home / "jobs", leave=LEAVE)
    os.kill(pid, signal.SIGCONT)
    return http, job["id"], job_dir, filler


def _assert_only_complete_checkpoints(job_dir: Path, steps: list[int]) -> None:
    ckpt_dir = job_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [f"step-{s}" for s in steps]
    for path in list_checkpoints(ckpt_dir):
        assert (path / STATE_FILE).is_file() and (path / "adapter_model.safetensors").is_file(), path


# Two trainings through a real server (~60 s on a shared 2-core machine): out of `make test-fast`.
@pytest.mark.slow
def test_a_checkpoint_write_on_a_full_disk_resumes_once_space_returns(
    tmp_path: Path, orca_path: Path, tiny_model_dir: Path
) -> None:
    env = {"PREFTUNE_FAULT_POINTS": "checkpoint.after_rename:stop@1", "PREFTUNE_MAX_JOB_ATTEMPTS": "3"}
    server = ServeProcess(home=tmp_path / "home", workers=1, env=env)
    with small_disk(server.home / "jobs", 24 * MiB):
        server.start()
        try:
            http, job_id, job_dir, filler = _full_after_first_checkpoint(
                server, orca_path, tiny_model_dir, tmp_path
            )
            events = _wait(
                http,
                job_id,
                lambda ev: any(e["type"] == "JOB_RETRY" for e in ev),
                "retry after the disk filled",
            )
            retry = next(e for e in events if e["type"] == "JOB_RETRY")
            assert retry["data"]["code"] == "insufficient_storage", (retry["message"], retry["data"])
            assert "the disk is full" in retry["message"] and "step-3" in retry["message"], retry
            # The failed write left nothing under a real name, nor a hidden partial copy.
            _assert_only_complete_checkpoints(job_dir, [3])

            filler.unlink()  # space returns: the retry resumes from step 3 and completes
            log = job_dir / "train.log"
            events = _wait(http, job_id, lambda ev: ev[-1]["type"] == "JOB_COMPLETE", "completion", log)
            job = http.get(f"/fine-tunes/{job_id}").json()
            assert job["status"] == "completed" and job["attempts"] >= 2, job
            restarts = [e for e in events if e["type"] == "JOB_RESTARTED"]
            assert restarts and all(e["data"]["resume_step"] == 3 for e in restarts), restarts
            _assert_only_complete_checkpoints(job_dir, [3, STEPS])
            metrics = http.get(f"/fine-tunes/{job_id}/metrics", params={"split": "train"}).json()["data"]
            assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
        finally:
            server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "postgres":
        return {"PREFTUNE_DATABASE_URL": create_database(request.getfixturevalue("postgres_server"))}
    return {}


@pytest.mark.slow
def test_a_checkpoint_write_on_a_disk_that_stays_full_fails_the_job_clearly(
    tmp_path: Path, orca_path: Path, tiny_model_dir: Path, database_env: dict[str, str]
) -> None:
    env = {
        **database_env,
        "PREFTUNE_FAULT_POINTS": "checkpoint.after_rename:stop@1",
        "PREFTUNE_MAX_JOB_ATTEMPTS": "1",
    }
    server = ServeProcess(home=tmp_path / "home", workers=1, env=env)
    with small_disk(server.home / "jobs", 24 * MiB):
        server.start()
        try:
            http, job_id, job_dir, filler = _full_after_first_checkpoint(
                server, orca_path, tiny_model_dir, tmp_path
            )
            events = _wait(http, job_id, lambda ev: ev[-1]["type"] == "JOB_ERROR", "job error")
            job = http.get(f"/fine-tunes/{job_id}").json()
            assert job["status"] == "error", job
            assert job["error"]["code"] == "insufficient_storage", job
            message = job["error"]["message"]
            assert "the disk is full" in message and "checkpoint at step 6" in message, message
            assert "last complete one is step-3" in message and "Free space" in message, message
            _assert_only_complete_checkpoints(job_dir, [3])
            # Nothing acknowledged is lost: the events up to the failure and the metrics of every step trained.
            types = [e["type"] for e in events]
            assert types.index("CHECKPOINT_SAVE") < types.index("JOB_ERROR"), types
            metrics = http.get(f"/fine-tunes/{job_id}/metrics", params={"split": "train"}).json()["data"]
            assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
            assert [c["step"] for c in http.get(f"/fine-tunes/{job_id}/checkpoints").json()["data"]] == [3]
            filler.unlink()
            # The complete checkpoint is still a usable artifact.
            tar = http.get(f"/fine-tunes/{job_id}/download", params={"artifact": "checkpoint", "step": 3})
            assert tar.status_code == 200 and len(tar.content) > 1024
        finally:
            server.stop()


def test_the_sqlite_disk_full_is_507_not_500(tmp_path: Path, orca_path: Path, tiny_model_dir: Path) -> None:
    database = tmp_path / "database"
    env = {"PREFTUNE_DATABASE_URL": f"sqlite:///{database / 'preftune.db'}"}
    server = ServeProcess(home=tmp_path / "home", workers=0, env=env)
    with small_disk(database, 8 * MiB):
        server.start()
        try:
            http = server.api()
            small = first_lines(orca_path, tmp_path / "orca-16.jsonl", 16)
            file = http.post("/files", files={"file": ("orca.jsonl", small.read_bytes())}).json()
            body = {"training_file": file["id"], "model": str(tiny_model_dir), **JOB}
            filler = fill_disk(database, leave=0)
            keyed = {"Idempotency-Key": "create-on-a-full-disk"}
            answers = [http.post("/fine-tunes", json={**body, "seed": i}, headers=keyed) for i in range(1)]
            # SQLite may still fit one small transaction in pages it holds; a few more cannot all fit.
            answers += [http.post("/fine-tunes", json={**body, "seed": i}) for i in range(1, 30)]
            codes = {r.status_code for r in answers}
            assert codes <= {200, 503, 507}, [
                (r.status_code, r.text) for r in answers if r.status_code not in (200, 503, 507)
            ]
            full = [r for r in answers if r.status_code == 507]
            assert full, "the database's disk never filled"
            _assert_disk_full(full[0])
            # Reads still answer.
            assert http.get(f"/files/{file['id']}").status_code == 200
            acked = {r.json()["id"] for r in answers if r.status_code == 200}
            print(
                f"database disk full: {len(acked)} of {len(answers)} creates fitted, {len(full)} answered 507"
            )

            filler.unlink()
            retried = http.post("/fine-tunes", json={**body, "seed": 0}, headers=keyed)
            assert retried.status_code == 200, retried.text
            jobs = http.get("/fine-tunes", params={"limit": 100}).json()["data"]
            ids = {j["id"] for j in jobs}
            # Every acknowledged create is there; the refused ones left no half-made job behind.
            assert acked <= ids and retried.json()["id"] in ids
            assert len(ids) == len(acked | {retried.json()["id"]}), (ids, acked)
            assert all(j["status"] == "queued" for j in jobs)
        finally:
            server.stop()
