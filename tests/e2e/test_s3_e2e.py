"""`preftune serve` on an S3 bucket (moto's standalone server over HTTP): uploads land in the bucket,
downloads stream from it with Range; a server killed in the middle of a 200 MB multipart upload
leaves, after its restart, no open upload, no object and no file record; a wrong endpoint or wrong
credentials stop `preftune serve` and `preftune runner` at start, naming the endpoint and the cause."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import s3
from helpers.ports import free_port
from helpers.server import ServeProcess, child_env, preftune_command

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def _server(tmp_path: Path, endpoint: str, bucket: str, **env: str) -> ServeProcess:
    return ServeProcess(home=tmp_path / "home", workers=0, env=s3.s3_env(endpoint, bucket) | env)


def test_upload_lands_in_the_bucket_and_downloads_stream_from_it(
    tmp_path: Path, s3_server: str, s3_bucket: str, orca_path: Path
) -> None:
    server = _server(tmp_path, s3_server, s3_bucket)
    server.start()
    try:
        body = orca_path.read_bytes()[: 200 * 1024]
        body = body[: body.rfind(b"\n") + 1]
        with server.api() as api:
            made = api.post("/files", files={"file": ("orca.jsonl", body)})
            assert made.status_code == 200, made.text
            file_id, sha = made.json()["id"], hashlib.sha256(body).hexdigest()
            assert s3.list_keys(s3_server, s3_bucket, "pt/blobs/") == [f"pt/blobs/{sha[:2]}/{sha}"]
            # The API machine's local copy is only a cache: without it, the bytes come from the bucket.
            shutil.rmtree(server.home / "blobs" / sha[:2])
            whole = api.get(f"/files/{file_id}/content")
            assert whole.status_code == 200 and whole.content == body
            assert whole.headers["content-length"] == str(len(body))
            part = api.get(f"/files/{file_id}/content", headers={"Range": "bytes=100-199"})
            assert part.status_code == 206 and part.content == body[100:200]
            assert part.headers["content-range"] == f"bytes 100-199/{len(body)}"
            tail = api.get(f"/files/{file_id}/content", headers={"Range": "bytes=-10"})
            assert tail.status_code == 206 and tail.content == body[-10:]
            past = api.get(f"/files/{file_id}/content", headers={"Range": f"bytes={len(body)}-"})
            assert past.status_code == 416
            assert api.delete(f"/files/{file_id}").status_code == 200
            assert s3.list_keys(s3_server, s3_bucket, "pt/blobs/") == []
    finally:
        server.stop()


def _garbage(total: int) -> Iterator[bytes]:
    # Not JSON: validation gives up at once and the time goes to the multipart upload.
    line = b"y" * (MiB - 1) + b"\n"
    for _ in range(total // MiB):
        yield line


@pytest.mark.slow
def test_server_killed_mid_200mb_multipart_upload_leaves_no_parts_and_no_record(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    # Part size 5 MiB: a 200 MB upload is 40 parts, so it is open long enough to be caught.
    server = _server(
        tmp_path,
        s3_server,
        s3_bucket,
        PREFTUNE_BLOB_PART_BYTES=str(5 * MiB),
        PREFTUNE_STALE_UPLOAD_SECONDS="0",
    )
    server.start()
    outcome: list[object] = []

    def upload() -> None:
        files = {"file": ("big.jsonl", b"".join(_garbage(200 * MiB)))}
        try:
            outcome.append(
                httpx.post(f"{server.base_url}/v1/files", files=files, headers=server.headers(), timeout=300)
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    deadline = time.monotonic() + 240
    while not s3.open_uploads(s3_server, s3_bucket):
        assert time.monotonic() < deadline and thread.is_alive(), f"no multipart upload seen: {outcome}"
        time.sleep(0.05)
    server.kill()
    thread.join(60)
    assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome  # never acknowledged
    assert s3.open_uploads(s3_server, s3_bucket), "the kill came after the upload finished"

    server.restart()  # the start-up sweep aborts uploads left by a dead process
    try:
        assert s3.open_uploads(s3_server, s3_bucket) == []
        assert s3.list_keys(s3_server, s3_bucket) == []
        with server.api() as api:
            assert api.get("/files").json()["data"] == []
    finally:
        server.stop()


def _start_fails(command: str, env: dict[str, str], home: Path) -> str:
    done = subprocess.run(
        preftune_command(command, *(["--port", str(free_port())] if command == "serve" else [])),
        env=child_env(home, **env),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    return " ".join((done.stdout + done.stderr).split())


def test_wrong_endpoint_or_credentials_stop_serve_and_runner_at_start(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    for command in ("serve", "runner"):
        out = _start_fails(command, s3.s3_env(nowhere, s3_bucket), tmp_path / command)
        assert nowhere in out and "cannot be reached" in out, out
    httpx.post(f"{s3_server}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        for command in ("serve", "runner"):
            out = _start_fails(command, s3.s3_env(s3_server, s3_bucket), tmp_path / f"{command}-key")
            assert s3_server in out and "credentials were refused" in out, out
    finally:
        httpx.post(f"{s3_server}/moto-api/reset-auth", content=b"inf").raise_for_status()
