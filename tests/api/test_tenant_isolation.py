"""Tenants never see each other, for every route of the app: generated from `app.routes`
(`helpers.routes.tenant_routes`: every route that needs a key), so a route added later (another
dialect, a new resource) is covered without anyone listing it; tests/api/test_route_coverage.py
fails for a route that is neither walked here nor listed as public with a reason.

Alice owns a file, a completed job (events, metrics, a checkpoint, an adapter, a fine-tuned model),
a queued job, a deployment and a second key. Bob, a separate owner, calls every route:
- a route with an id in its path, filled with Alice's id, answers 404 with none of Alice's data;
- a list route answers with none of Alice's ids, names or bytes (and a cursor of Alice's is a 404);
- a create naming Alice's file or model is a 404 naming the parameter, and a create with Alice's
  Idempotency-Key makes Bob's own resource (`helpers.routes.CREATES` lists what each create gets);
- no key, an unknown key and a revoked key get 401 on every route that is not public;
and Alice's resources are unchanged afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from helpers.routes import CREATES, PUBLIC, tenant_routes
from preftune.api.app import create_app
from preftune.config import Settings
from preftune.service import deployments as deployment_service
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.service import keys as key_service
from preftune.service import runs

ALICE_BYTES = "alice-private-adapter-bytes"
PAIR = (
    '{"input": {"messages": [{"role": "user", "content": "alice-secret-prompt"}]}, '
    '"preferred_output": [{"role": "assistant", "content": "Hi!"}], '
    '"non_preferred_output": [{"role": "assistant", "content": "No."}]}\n'
)


@dataclass
class Tenants:
    client: TestClient
    app: Any
    alice: str
    bob: str
    revoked: str
    ids: dict[str, str]
    model_dir: Path

    def secrets(self) -> list[str]:
        return [*self.ids.values(), ALICE_BYTES, "alice-secret-prompt", "alice-pairs"]


def _path_value(param: str, ids: dict[str, str]) -> str:
    """Alice's id for a path parameter, recognised by its name (any dialect's spelling)."""
    name = param.lower()
    for needle, kind in (
        ("checkpoint", "checkpoint"),
        ("event", "event"),
        ("deploy", "deployment"),
        ("key", "key"),
        ("file", "file"),
        ("job", "job"),
        ("fine_tune", "job"),
        ("finetune", "job"),
        ("model", "model"),
    ):
        if needle in name:
            return ids[kind]
    raise AssertionError(
        f"path parameter {param!r} is not known to the tenant test: teach _path_value which of Alice's "
        "resources it names, so the route is checked for isolation"
    )


@pytest.fixture
def tenants(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Tenants]:
    settings = Settings(home=tmp_path / "home", allow_on_demand_load=False)
    app = create_app(settings)
    with TestClient(app) as client:
        db, blobs = app.state.db, app.state.blobs
        with db.session() as session:
            alice = key_service.create_owner(session, "alice")
            _, alice_key = key_service.create_key(session, alice.id, "a", is_admin=True)
            extra, _ = key_service.create_key(session, alice.id, "second")
            bob = key_service.create_owner(session, "bob")
            _, bob_key = key_service.create_key(session, bob.id, "b")
            gone, revoked_key = key_service.create_key(session, bob.id, "old")
            key_service.revoke_key(session, bob.id, gone.id)
            file = file_service.create_file(
                session,
                alice.id,
                blobs.stage_chunks([PAIR.encode() * 4]),
                blobs=blobs,
                filename="alice.jsonl",
                name="alice-pairs",
                idempotency_key="alice-upload-key",
            )
            assert file.status == "processed"
            done = job_service.create_job(
                session,
                alice.id,
                model=str(tiny_model_dir),
                training_file=file.id,
                settings=settings,
                idempotency_key="alice-job-key",
            )
            claimed = runs.claim_job(session, "r", settings, blobs)
            assert claimed is not None and claimed.job_id == done.id
            out = job_service.job_dir(settings, done.id)
            for sub in ("adapter", "checkpoints/step-1"):
                (out / sub).mkdir(parents=True)
                (out / sub / "adapter_model.safetensors").write_text(ALICE_BYTES)
            runs.record_step(
                session, done.id, claimed.claim_token, {"step": 1, "loss": 0.6931, "total_steps": 1}
            )
            runs.record_checkpoint(session, done.id, claimed.claim_token, 1, out / "checkpoints/step-1")
            finished = runs.complete_job(
                session,
                done.id,
                claimed.claim_token,
                base_model_path=tiny_model_dir,
                adapter_path=out / "adapter",
                model_path=None,
                merged_path=None,
                steps=1,
            )
            queued = job_service.create_job(
                session, alice.id, model=str(tiny_model_dir), training_file=file.id, settings=settings
            )
            model = finished.output_name
            assert model is not None
            deployment = deployment_service.create_deployment(session, alice.id, model, min_replicas=0)
            checkpoint = job_service.list_checkpoints(session, alice.id, done.id)[0]
            event = job_service.list_events(session, alice.id, done.id).data[-1]
        ids = {
            "file": file.id,
            "job": done.id,
            "queued_job": queued.id,
            "model": model,
            "deployment": deployment.id,
            "key": extra.id,
            "checkpoint": checkpoint.id,
            "event": f"ftevent-{event.seq}",
        }
        yield Tenants(client, app, alice_key, bob_key, revoked_key, ids, tiny_model_dir)


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: _path_value(m.group(1), ids), path)


def _leaks(text: str, secrets: list[str], allowed: str) -> list[str]:
    # A 404 may echo the id the caller sent (it is in the URL already), and nothing else of Alice's.
    return [s for s in secrets if s in text and s not in allowed]


def test_another_owner_gets_404_and_none_of_the_data_on_every_route(tenants: Tenants) -> None:
    http, ids = tenants.client, tenants.ids
    bob = {"Authorization": f"Bearer {tenants.bob}"}
    checked_id, checked_list = [], []
    for route in tenant_routes(tenants.app):
        method, path, params = route.method, route.path, route.params
        url = _fill(path, ids)
        if params:
            response = http.request(method, url, headers=bob, json={} if method == "POST" else None)
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            assert response.json()["error"]["type"] == "not_found_error", (method, path)
            assert not _leaks(response.text, tenants.secrets(), url), (method, path, response.text)
            checked_id.append(f"{method} {path}")
        elif method == "GET":
            response = http.get(url, headers=bob)
            assert response.status_code == 200, (method, path, response.text)
            assert not _leaks(response.text, tenants.secrets(), ""), (method, path, response.text)
            # A cursor of Alice's is unknown to Bob, whatever the list.
            cursor = http.get(url, params={"after": ids["job"]}, headers=bob)
            assert cursor.status_code in (200, 404), (method, path, cursor.text)
            assert not _leaks(cursor.text, tenants.secrets(), ids["job"]), (method, path, cursor.text)
            checked_list.append(f"{method} {path}")
    # The numbers docs/reliability.md quotes; a new route raises them.
    print(f"isolation: {len(checked_id)} id routes, {len(checked_list)} list routes")
    assert len(checked_id) >= 18 and len(checked_list) >= 6

    # Creates that name Alice's resources in the body.
    creates_checked = set()
    for path, body, param in (
        ("/v1/fine-tunes", {"training_file": ids["file"], "model": "x"}, "training_file"),
        ("/v1/fine-tunes", {"training_file": "alice-pairs", "model": "x"}, "training_file"),
        ("/v1/fine_tuning/jobs", {"training_file": ids["file"], "model": "x"}, "training_file"),
        (
            "/v1/chat/completions",
            {"model": ids["model"], "messages": [{"role": "user", "content": "hi"}]},
            "model",
        ),
        ("/v1/deployments", {"model": ids["model"]}, "model"),
    ):
        response = http.post(path, json=body, headers=bob)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["param"] == param, (path, response.text)
        assert not _leaks(response.text, tenants.secrets(), str(body)), (path, response.text)
        creates_checked.add(("POST", path))

    # Alice's Idempotency-Keys are hers: Bob sending them gets his own new resources, never hers.
    upload = http.post(
        "/v1/files",
        files={"file": ("bob.jsonl", PAIR.encode() * 4)},
        headers={**bob, "Idempotency-Key": "alice-upload-key"},
    )
    assert upload.status_code == 200 and upload.json()["id"] != ids["file"], upload.text
    assert not _leaks(upload.text, tenants.secrets(), ""), upload.text
    job = http.post(
        "/v1/fine-tunes",
        json={"training_file": upload.json()["id"], "model": str(tenants.model_dir)},
        headers={**bob, "Idempotency-Key": "alice-job-key"},
    )
    assert job.status_code == 200 and job.json()["id"] != ids["job"], job.text
    assert not _leaks(job.text, tenants.secrets(), ""), job.text
    creates_checked |= {("POST", "/v1/files"), ("POST", "/v1/fine-tunes")}
    # A key Bob makes is his own owner's; a new owner needs an admin key.
    made = http.post("/v1/keys", json={"name": "bob-2"}, headers=bob)
    assert made.status_code == 200, made.text
    own = http.get("/v1/files", headers={"Authorization": f"Bearer {made.json()['key']}"}).json()["data"]
    assert [f["id"] for f in own] == [upload.json()["id"]]
    refused = http.post("/v1/keys", json={"name": "x", "new_owner": True}, headers=bob)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "new_owner", refused.text
    creates_checked.add(("POST", "/v1/keys"))
    # Every create of the route table was sent another owner's resources (helpers.routes.CREATES).
    assert (
        creates_checked == {r.key for r in tenant_routes(tenants.app) if r.kind == "create"} == set(CREATES)
    )

    # Nothing Bob did touched Alice's resources.
    alice = {"Authorization": f"Bearer {tenants.alice}"}
    assert http.get(f"/v1/files/{ids['file']}", headers=alice).status_code == 200
    assert http.get(f"/v1/fine-tunes/{ids['queued_job']}", headers=alice).json()["status"] == "queued"
    assert http.get(f"/v1/deployments/{ids['deployment']}", headers=alice).json()["status"] != "stopped"
    assert http.get("/v1/keys", headers=alice).json()["data"][0]["revoked_at"] is None


def test_no_key_an_unknown_key_or_a_revoked_key_is_401_on_every_route(tenants: Tenants) -> None:
    http = tenants.client
    checked = 0
    for route in tenant_routes(tenants.app):
        method, path = route.method, route.path
        url = _fill(path, tenants.ids)
        for headers in (
            {},
            {"Authorization": "Bearer pt-not-a-real-key"},
            {"Authorization": f"Bearer {tenants.revoked}"},
            {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        ):
            response = http.request(method, url, headers=headers, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["type"] == "authentication_error"
            assert not _leaks(response.text, tenants.secrets(), ""), (method, path)
        checked += 1
    assert checked >= 30
    # The public routes answer anyone (helpers.routes.PUBLIC says why each may).
    for method, path in PUBLIC:
        if "{" not in path:
            assert http.request(method, path).status_code == 200, (method, path)
