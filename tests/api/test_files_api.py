"""`/v1/files` on the real app: upload validation, listing, content, report, limits, errors."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from preftune.api.app import create_app
from preftune.config import Settings
from preftune.store.blobs import BlobStore

GOOD = {
    "input": {"messages": [{"role": "user", "content": "Say hi."}]},
    "preferred_output": [{"role": "assistant", "content": "Hi!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def _upload(api: Any, content: bytes, **form: str) -> Any:
    return api.client.post(
        "/v1/files",
        files={"file": ("data.jsonl", content, "application/jsonl")},
        data={"purpose": "fine-tune", **form},
        headers=api.headers(),
    )


def test_upload_valid_file_is_processed_and_round_trips(api: Any, orca_path: Path) -> None:
    content = orca_path.read_bytes()
    response = _upload(api, content[: 200 * 1024].rsplit(b"\n", 1)[0] + b"\n", name="orca-sample")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "file" and body["id"].startswith("file-")
    assert body["status"] == "processed" and body["format"] == "preference"
    assert body["n_examples"] > 3 and body["name"] == "orca-sample"

    listed = api.client.get("/v1/files", headers=api.headers()).json()
    assert [f["id"] for f in listed["data"]] == [body["id"]] and listed["has_more"] is False

    downloaded = api.client.get(f"/v1/files/{body['id']}/content", headers=api.headers())
    assert hashlib.sha256(downloaded.content).hexdigest() == body["sha256"]
    # By dataset name too.
    assert api.client.get("/v1/files/orca-sample", headers=api.headers()).json()["id"] == body["id"]


def test_invalid_file_is_kept_with_error_status_and_full_report(api: Any) -> None:
    bad = dict(GOOD, preferred_output=[{"role": "user", "content": "wrong role"}])
    response = _upload(api, _jsonl([GOOD, bad, GOOD, GOOD]))
    body = response.json()
    assert response.status_code == 200 and body["status"] == "error"
    assert "line 2" in body["status_details"]
    report = api.client.get(f"/v1/files/{body['id']}/report", headers=api.headers()).json()
    assert report["errors"][0]["line"] == 2
    assert "preferred_output" in report["errors"][0]["field"]


def test_upload_over_the_limit_is_413_naming_the_limit(api: Any) -> None:
    big = _jsonl([GOOD] * 3000)  # ~ 400 KB > the fixture's 256 KiB limit
    response = _upload(api, big)
    assert response.status_code == 413
    error = response.json()["error"]
    assert str(api.settings.max_upload_bytes) in error["message"] and error["param"] == "file"
    assert api.client.get("/v1/files", headers=api.headers()).json()["data"] == []


def test_bad_dataset_name_and_purpose_name_the_parameter(api: Any) -> None:
    response = _upload(api, _jsonl([GOOD] * 3), name="Not_Valid")
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"
    response = _upload(api, _jsonl([GOOD] * 3), purpose="batch")
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"


def test_pagination_and_delete(api: Any) -> None:
    ids = [_upload(api, _jsonl([GOOD] * (3 + i))).json()["id"] for i in range(3)]
    first = api.client.get("/v1/files?limit=2", headers=api.headers()).json()
    assert first["has_more"] is True and [f["id"] for f in first["data"]] == ids[::-1][:2]
    rest = api.client.get(f"/v1/files?limit=2&after={first['last_id']}", headers=api.headers()).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False

    deleted = api.client.delete(f"/v1/files/{ids[0]}", headers=api.headers()).json()
    assert deleted == {"id": ids[0], "object": "file", "deleted": True}
    missing = api.client.get(f"/v1/files/{ids[0]}", headers=api.headers())
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_auth_is_required_and_owners_are_isolated(api: Any) -> None:
    file_id = _upload(api, _jsonl([GOOD] * 3)).json()["id"]
    assert api.client.get("/v1/files").status_code == 401
    wrong = api.client.get("/v1/files", headers={"Authorization": "Bearer pt-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    for method, path in [("GET", ""), ("GET", "/content"), ("GET", "/report"), ("DELETE", "")]:
        response = api.client.request(method, f"/v1/files/{file_id}{path}", headers=api.headers(api.key_b))
        assert response.status_code == 404, (method, path)
    assert api.client.get("/v1/files", headers=api.headers(api.key_b)).json()["data"] == []


def test_limit_holds_for_a_body_just_over_it(api: Any) -> None:
    # Within the multipart allowance of the Content-Length check: the streaming copy refuses it.
    limit = api.settings.max_upload_bytes
    line = json.dumps(GOOD).encode() + b"\n"
    body = line * (limit // len(line) + 1)
    assert limit < len(body) < limit + 2 * len(line)
    response = _upload(api, body)
    assert response.status_code == 413 and response.json()["error"]["param"] == "file"
    assert not any(api.settings.blobs_dir.rglob("*.part"))
    ok = _upload(api, line * (limit // len(line)))
    assert ok.status_code == 200 and ok.json()["status"] == "processed"


def test_report_with_a_model_adds_token_statistics_with_histograms(
    api: Any, orca_path: Path, tiny_model_dir: Path
) -> None:
    content = orca_path.read_bytes()
    body = _upload(api, content[: 60 * 1024].rsplit(b"\n", 1)[0] + b"\n").json()
    plain = api.client.get(f"/v1/files/{body['id']}/report", headers=api.headers()).json()
    assert "token_stats" not in plain or not plain["token_stats"]

    url = f"/v1/files/{body['id']}/report?model={tiny_model_dir}&max_length=128"
    report = api.client.get(url, headers=api.headers()).json()
    stats = report["token_stats"]
    assert stats["max_length"] == 128 and stats["n_examples"] == body["n_examples"]
    for part in ("prompt", "preferred", "non_preferred"):
        hist = stats[part]["histogram"]
        assert sum(hist["counts"]) == body["n_examples"]
        assert len(hist["edges"]) == len(hist["counts"]) + 1 and hist["edges"][-1] > stats[part]["max"]
    assert 0 < stats["truncated"] <= body["n_examples"]

    missing = api.client.get(f"/v1/files/{body['id']}/report?model=no-such-model", headers=api.headers())
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    other = api.client.get(url, headers=api.headers(api.key_b))
    assert other.status_code == 404


def test_an_upload_retried_with_its_idempotency_key_returns_the_first_file(api: Any) -> None:
    content = _jsonl([GOOD] * 3)
    key = {"Idempotency-Key": "upload-1"}
    first = api.client.post(
        "/v1/files",
        files={"file": ("data.jsonl", content, "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=api.headers() | key,
    )
    again = api.client.post(
        "/v1/files",
        files={"file": ("data.jsonl", content, "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=api.headers() | key,
    )
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    listed = api.client.get("/v1/files", headers=api.headers()).json()["data"]
    assert [f["id"] for f in listed] == [first.json()["id"]]

    # The same key with other content is a mistake: 409 naming the header and the first file.
    other = api.client.post(
        "/v1/files",
        files={"file": ("data.jsonl", _jsonl([GOOD] * 4), "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=api.headers() | key,
    )
    assert other.status_code == 409
    error = other.json()["error"]
    assert error["param"] == "Idempotency-Key" and error["code"] == "idempotency_key_reused"
    assert first.json()["id"] in error["message"] and "new key" in error["message"]

    # Keys are per owner: bob's upload with alice's key is bob's own new file.
    bobs = api.client.post(
        "/v1/files",
        files={"file": ("data.jsonl", content, "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=api.headers(api.key_b) | key,
    )
    assert bobs.status_code == 200 and bobs.json()["id"] != first.json()["id"]
    assert len(api.client.get("/v1/files", headers=api.headers()).json()["data"]) == 1


def test_an_upload_without_a_key_is_always_new_and_a_deleted_files_key_is_free(api: Any) -> None:
    content = _jsonl([GOOD] * 3)
    ids = {_upload(api, content).json()["id"] for _ in range(2)}
    assert len(ids) == 2
    key = {"Idempotency-Key": "upload-2"}
    files = {"file": ("data.jsonl", content, "application/jsonl")}
    first = api.client.post("/v1/files", files=files, headers=api.headers() | key).json()
    assert api.client.delete(f"/v1/files/{first['id']}", headers=api.headers()).status_code == 200
    files = {"file": ("data.jsonl", content, "application/jsonl")}
    second = api.client.post("/v1/files", files=files, headers=api.headers() | key)
    assert second.status_code == 200 and second.json()["id"] != first["id"]


def _blob_files(api: Any) -> list[str]:
    root = api.settings.blobs_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_refused_upload_leaves_no_blob_behind(api: Any) -> None:
    content = _jsonl([GOOD] * 3)
    key = {"Idempotency-Key": "upload-3"}
    files = {"file": ("data.jsonl", content, "application/jsonl")}
    first = api.client.post("/v1/files", files=files, data={"name": "pairs"}, headers=api.headers() | key)
    assert first.status_code == 200, first.text
    sha = first.json()["sha256"]
    before = _blob_files(api)
    assert [b for b in before if not b.startswith("tmp/")] == [f"{sha[:2]}/{sha}"]
    other = {"file": ("data.jsonl", _jsonl([GOOD] * 4), "application/jsonl")}
    reused_key = api.client.post("/v1/files", files=other, headers=api.headers() | key)
    assert reused_key.status_code == 409 and reused_key.json()["error"]["code"] == "idempotency_key_reused"
    assert _blob_files(api) == before
    other = {"file": ("data.jsonl", _jsonl([GOOD] * 5), "application/jsonl")}
    taken_name = api.client.post("/v1/files", files=other, data={"name": "pairs"}, headers=api.headers())
    assert taken_name.status_code == 409 and taken_name.json()["error"]["code"] == "name_taken"
    assert _blob_files(api) == before
    # The refused bytes are not lost to an accepted upload of the same bytes afterwards.
    accepted = api.client.post("/v1/files", files=other, headers=api.headers())
    assert accepted.status_code == 200
    content_url = f"/v1/files/{accepted.json()['id']}/content"
    assert api.client.get(content_url, headers=api.headers()).content == _jsonl([GOOD] * 5)


def test_server_start_removes_uploads_left_half_staged_by_a_dead_process(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    staged = BlobStore(settings.blobs_dir).stage_chunks([b"half an upload"])  # its process then died
    old = time.time() - 7 * 3600
    os.utime(staged.path, (old, old))
    with TestClient(create_app(settings)):
        assert not staged.path.exists()
