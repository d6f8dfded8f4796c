"""SIGKILL of the API server in the middle of uploads and job creates, then a restart:
nothing acknowledged is lost, no blob sits under its real name with other bytes, and the clients'
retries of their creates (same Idempotency-Key) give exactly one resource per key, whether or not
the first attempt was acknowledged before the kill. The creates go through both dialects' create
routes: the native `/v1/fine-tunes` and the OpenAI-compatible `/v1/fine_tuning/jobs`."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.postgres import create_database

pytestmark = pytest.mark.e2e

UPLOADERS = 3
CREATORS = 4  # even workers create through the native route, odd ones through the OpenAI-compatible one
RUN_SECONDS = 4.0


def _payload(orca_path: Path, copies: int) -> bytes:
    lines = orca_path.read_text(encoding="utf-8").splitlines()
    return ("\n".join(lines * copies) + "\n").encode()


def _nonce(idem: str) -> bytes:
    pair = {
        "input": {"messages": [{"role": "user", "content": f"Which upload is this? {idem}"}]},
        "preferred_output": [{"role": "assistant", "content": idem}],
        "non_preferred_output": [{"role": "assistant", "content": "I do not know."}],
    }
    return (json.dumps(pair) + "\n").encode()


def _create_request(idem: str, training_file: str, model: str) -> tuple[str, dict[str, Any]]:
    """The route and body of the create that key `job-<worker>-<i>` stands for (the same on every retry)."""
    _, worker, i = idem.split("-")
    if int(worker) % 2 == 0:
        return "/v1/fine-tunes", {"training_file": training_file, "model": model, "seed": int(i)}
    body = {"training_file": training_file, "model": model, "seed": int(i), "method": {"type": "dpo"}}
    return "/v1/fine_tuning/jobs", body


def _hammer(
    base_url: str,
    key: str,
    training_file: str,
    model: str,
    payload: bytes,
    stop: threading.Event,
) -> tuple[dict[str, str], dict[str, str], set[str], set[str]]:
    """Upload and create until the server dies; (acked uploads key->id, acked jobs key->id, tried keys)."""
    acked_files: dict[str, str] = {}
    acked_jobs: dict[str, str] = {}
    tried_files: set[str] = set()
    tried_jobs: set[str] = set()
    lock = threading.Lock()

    def upload(worker: int) -> None:
        with httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
            for i in range(1000):
                if stop.is_set():
                    return
                idem = f"up-{worker}-{i}"
                body = payload + _nonce(idem)  # every upload has its own bytes
                with lock:
                    tried_files.add(idem)
                try:
                    r = http.post(
                        "/v1/files", files={"file": ("big.jsonl", body)}, headers={"Idempotency-Key": idem}
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        acked_files[idem] = r.json()["id"]

    def create(worker: int) -> None:
        with httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
            for i in range(1000):
                if stop.is_set():
                    return
                idem = f"job-{worker}-{i}"
                with lock:
                    tried_jobs.add(idem)
                route, body = _create_request(idem, training_file, model)
                try:
                    r = http.post(route, json=body, headers={"Idempotency-Key": idem})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        acked_jobs[idem] = r.json()["id"]

    threads = [threading.Thread(target=upload, args=(w,)) for w in range(UPLOADERS)]
    threads += [threading.Thread(target=create, args=(w,)) for w in range(CREATORS)]
    for t in threads:
        t.start()
    return acked_files, acked_jobs, tried_files, tried_jobs  # the caller kills the server, then joins


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def crash_server(request: pytest.FixtureRequest, fresh_server: Any) -> Any:
    """The test's own server on SQLite, or on a fresh database of the session's PostgreSQL."""
    if request.param == "postgres":
        base = request.getfixturevalue("postgres_server")
        fresh_server.env["PREFTUNE_DATABASE_URL"] = create_database(base)
    return fresh_server


@pytest.mark.slow
def test_sigkill_mid_upload_and_create_loses_nothing_acknowledged(
    crash_server: Any, orca_path: Path, tiny_model_dir: Path
) -> None:
    fresh_server = crash_server
    fresh_server.start()
    key = fresh_server.api_key
    with httpx.Client(
        base_url=fresh_server.base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        seed = http.post("/v1/files", files={"file": ("seed.jsonl", _payload(orca_path, 1))}).json()
    payload = _payload(orca_path, 8)  # ~3 MB: uploads are in flight when the kill comes
    stop = threading.Event()
    before = set(threading.enumerate())
    acked_files, acked_jobs, tried_files, tried_jobs = _hammer(
        fresh_server.base_url, key, seed["id"], str(tiny_model_dir), payload, stop
    )
    time.sleep(RUN_SECONDS)
    fresh_server.kill()
    stop.set()
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=60)
    openai_acked = [idem for idem in acked_jobs if _create_request(idem, "", "")[0] == "/v1/fine_tuning/jobs"]
    print(
        f"acknowledged before SIGKILL: {len(acked_files)} uploads, {len(acked_jobs)} creates "
        f"({len(openai_acked)} through the OpenAI-compatible route)"
    )
    assert acked_files and acked_jobs, "nothing was acknowledged before the kill; the test proves nothing"
    assert 0 < len(openai_acked) < len(acked_jobs), "both create routes must be acknowledged before the kill"

    fresh_server.restart()
    blobs = fresh_server.home / "blobs"
    for blob in blobs.glob("??/*"):
        # A blob under its real name holds exactly the bytes that name says.
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob

    with httpx.Client(
        base_url=fresh_server.base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        for idem, file_id in acked_files.items():
            got = http.get(f"/v1/files/{file_id}")
            assert got.status_code == 200 and got.json()["status"] == "processed", (idem, got.text)
            content = http.get(f"/v1/files/{file_id}/content").content
            assert hashlib.sha256(content).hexdigest() == got.json()["sha256"]
        for idem, job_id in acked_jobs.items():
            got = http.get(f"/v1/fine-tunes/{job_id}")
            assert got.status_code == 200 and got.json()["status"] == "queued", (idem, got.text)
            if idem in openai_acked:
                got = http.get(f"/v1/fine_tuning/jobs/{job_id}")
                assert got.status_code == 200 and got.json()["status"] in ("queued", "validating_files"), (
                    got.text
                )

        # Every client retries its creates after the restart, acknowledged or not.
        for idem in sorted(tried_files):
            body = payload + _nonce(idem)
            r = http.post("/v1/files", files={"file": ("big.jsonl", body)}, headers={"Idempotency-Key": idem})
            assert r.status_code == 200, r.text
            if idem in acked_files:
                assert r.json()["id"] == acked_files[idem]
        for idem in sorted(tried_jobs):
            route, body = _create_request(idem, seed["id"], str(tiny_model_dir))
            r = http.post(route, json=body, headers={"Idempotency-Key": idem})
            assert r.status_code == 200, (route, r.text)
            if idem in acked_jobs:
                assert r.json()["id"] == acked_jobs[idem], route

        files = http.get("/v1/files", params={"limit": 1000}).json()["data"]
        jobs = http.get("/v1/fine-tunes", params={"limit": 1000}).json()["data"]
    assert len(files) == len(tried_files) + 1  # one per key, and the seed
    assert len(jobs) == len(tried_jobs)
    assert all(j["status"] == "queued" for j in jobs)
