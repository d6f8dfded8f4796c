"""Secrets never leak: a full run on the real server (upload, a DPO job with a W&B key that trains to
completion on the runner, events, metrics, downloads, failing requests, the console), then every
response and every file the server wrote (its log, the trainer's log, W&B's offline run, the
database) is searched for the API keys and the W&B key. Only the credentials file may hold the
local admin key, and only the create response may show a new key, once."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 420.0
# Files whose job is to hold a secret: the local admin key for the CLI, and the encryption key.
HOLDERS = {"credentials", "secret.key"}


@pytest.mark.slow
def test_no_secret_in_any_response_log_event_or_file(
    server: Any, orca_path: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    responses: list[str] = []

    def keep(response: httpx.Response) -> None:
        response.read()
        responses.append(f"{response.request.method} {response.request.url} {response.status_code}")
        responses.append(str(dict(response.headers)))
        if "json" in response.headers.get("content-type", "") or "text" in response.headers.get(
            "content-type", ""
        ):
            responses.append(response.text)

    admin_key = server.api_key
    http = httpx.Client(
        base_url=server.base_url,
        timeout=60,
        headers={"Authorization": f"Bearer {admin_key}"},
        event_hooks={"response": [keep]},
    )
    wandb_key = "wandb-" + secrets.token_hex(20)
    created = http.post("/v1/keys", json={"name": "ci"})
    new_key = created.json()["key"]
    responses.pop()  # the create response shows the new key, by design, once
    other = http.post("/v1/keys", json={"name": "other-owner", "new_owner": True}).json()["key"]
    responses.pop()

    sample = tmp_path / "small.jsonl"
    sample.write_text("\n".join(orca_path.read_text(encoding="utf-8").splitlines()[:8]) + "\n")
    headers = {"Authorization": f"Bearer {new_key}"}
    with sample.open("rb") as handle:
        file = http.post("/v1/files", files={"file": ("s.jsonl", handle)}, headers=headers).json()
    body = {
        "training_file": file["id"],
        "model": str(tiny_model_dir),
        "max_steps": 2,
        "batch_size": 2,
        "max_length": 64,
        "n_checkpoints": 2,
        "wandb_api_key": wandb_key,
        "wandb_project": "leak-check",
    }
    created_job = http.post("/v1/fine-tunes", json=body, headers=headers)
    assert created_job.status_code == 200, created_job.text
    job = created_job.json()
    # A failing create and a bad key carry the secrets in the request: the answers must not echo them.
    http.post("/v1/fine-tunes", json={**body, "dpo_beta": -1}, headers=headers)
    http.post("/v1/fine_tuning/jobs", json={**body, "model": "no-such-model"}, headers=headers)
    http.get("/v1/files", headers={"Authorization": f"Bearer {new_key}x"})
    http.get(f"/v1/fine-tunes/{job['id']}", headers={"Authorization": f"Bearer {other}"})

    deadline = time.monotonic() + JOB_TIMEOUT
    status = job["status"]
    while status not in ("completed", "error", "user_error", "cancelled") and time.monotonic() < deadline:
        time.sleep(1)
        status = http.get(f"/v1/fine-tunes/{job['id']}", headers=headers).json()["status"]
    assert status == "completed", (status, server.log())

    for url in (
        f"/v1/fine-tunes/{job['id']}",
        f"/v1/fine-tunes/{job['id']}/events",
        f"/v1/fine-tunes/{job['id']}/metrics",
        f"/v1/fine-tunes/{job['id']}/checkpoints",
        f"/v1/fine_tuning/jobs/{job['id']}",
        f"/v1/fine_tuning/jobs/{job['id']}/events",
        "/v1/fine-tunes",
        "/v1/fine_tuning/jobs",
        "/v1/keys",
        "/v1/models",
        f"/v1/files/{file['id']}/report",
        "/",
    ):
        assert http.get(url, headers=headers).status_code == 200, url
    hyper = http.get(f"/v1/fine-tunes/{job['id']}", headers=headers).json()["hyperparameters"]
    assert hyper.get("wandb_api_key_set") is True

    wanted = {
        "admin API key": admin_key,
        "API key": new_key,
        "other owner's key": other,
        "W&B key": wandb_key,
    }
    leaks = []
    for i, text in enumerate(responses):
        leaks += [
            f"response {responses[i - 2 if i >= 2 else 0][:120]}: {name}"
            for name, s in wanted.items()
            if s in text
        ]
    scanned = 0
    for path in sorted(server.home.rglob("*")):
        if not path.is_file() or path.name in HOLDERS:
            continue
        data = path.read_bytes()
        scanned += 1
        leaks += [
            f"{path.relative_to(server.home)}: {name}" for name, s in wanted.items() if s.encode() in data
        ]
    log = server.log_path.read_bytes()
    leaks += [f"server log: {name}" for name, s in wanted.items() if s.encode() in log]
    assert scanned > 10
    assert not leaks, leaks
    # The keys are stored hashed: the database holds their sha256, never the key.
    assert (server.home / "credentials").read_text().split()[0] == admin_key
