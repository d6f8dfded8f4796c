"""`/v1/fine-tunes` on the real app (no runner: jobs stay queued): validation names the
parameter and queues nothing, idempotency, cancel, events, secrets never shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

GOOD = {
    "input": {"messages": [{"role": "user", "content": "Say hi."}]},
    "preferred_output": [{"role": "assistant", "content": "Hi!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}


def _upload(api: Any, rows: list[dict[str, Any]], key: str | None = None) -> dict[str, Any]:
    content = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    response = api.client.post(
        "/v1/files",
        files={"file": ("d.jsonl", content, "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=api.headers(key),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def training_file(api: Any) -> str:
    return str(_upload(api, [GOOD] * 4)["id"])


def _create(api: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return api.client.post("/v1/fine-tunes", json=body, headers={**api.headers(), **(headers or {})})


def _job_count(api: Any) -> int:
    return len(api.client.get("/v1/fine-tunes", headers=api.headers()).json()["data"])


@pytest.mark.parametrize(
    ("extra", "status", "param"),
    [
        ({"dpo_beta": -1}, 400, "dpo_beta"),
        ({"lora_r": 0}, 400, "lora_r"),
        ({"dpo_bta": 0.1}, 400, "dpo_bta"),
        ({"training_method": "ppo"}, 400, "training_method"),
        ({"simpo_gamma": 1.0, "dpo_loss_type": "ipo"}, 400, "simpo_gamma"),
        ({"model": "no-such-model"}, 404, "model"),
        ({"training_file": "file-doesnotexist"}, 404, "training_file"),
        ({"from_checkpoint": "ftjob-nothere:3"}, 404, "from_checkpoint"),
    ],
)
def test_bad_create_names_the_parameter_and_queues_nothing(
    api: Any, training_file: str, tiny_model_dir: Path, extra: dict[str, Any], status: int, param: str
) -> None:
    body = {"training_file": training_file, "model": str(tiny_model_dir), **extra}
    response = _create(api, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert param.split(".")[0] in error["message"] or status == 404
    assert _job_count(api) == 0


def test_file_that_failed_validation_is_refused(api: Any, tiny_model_dir: Path) -> None:
    bad = _upload(api, [GOOD, {"input": {}}, GOOD])
    assert bad["status"] == "error"
    response = _create(api, {"training_file": bad["id"], "model": str(tiny_model_dir)})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "training_file"
    assert _job_count(api) == 0


def test_create_shows_resolved_hyperparameters_without_secrets(
    api: Any, training_file: str, tiny_model_dir: Path
) -> None:
    response = _create(
        api,
        {
            "training_file": training_file,
            "model": str(tiny_model_dir),
            "dpo_beta": 0.2,
            "rpo_alpha": 1.0,
            "wandb_api_key": "very-secret-wandb",
            "suffix": "demo",
        },
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["id"].startswith("ftjob-") and job["status"] == "queued"
    hyper = job["hyperparameters"]
    assert hyper["dpo_beta"] == 0.2 and hyper["rpo_alpha"] == 1.0 and hyper["lora"] is True
    assert hyper["wandb_api_key_set"] is True
    for path in (f"/v1/fine-tunes/{job['id']}", "/v1/fine-tunes", f"/v1/fine_tuning/jobs/{job['id']}"):
        assert "very-secret-wandb" not in api.client.get(path, headers=api.headers()).text
    events = api.client.get(f"/v1/fine-tunes/{job['id']}/events", headers=api.headers()).json()["data"]
    assert [e["type"] for e in events] == ["JOB_PENDING", "JOB_QUEUED"]
    later = api.client.get(
        f"/v1/fine-tunes/{job['id']}/events?after={events[0]['id']}", headers=api.headers()
    ).json()["data"]
    assert [e["id"] for e in later] == [events[1]["id"]]


def test_idempotency_key_returns_the_first_job(api: Any, training_file: str, tiny_model_dir: Path) -> None:
    body = {"training_file": training_file, "model": str(tiny_model_dir), "n_epochs": 2}
    first = _create(api, body, {"Idempotency-Key": "k-1"}).json()
    again = _create(api, body, {"Idempotency-Key": "k-1"}).json()
    assert again["id"] == first["id"] and _job_count(api) == 1
    changed = _create(api, {**body, "n_epochs": 3}, {"Idempotency-Key": "k-1"})
    assert changed.status_code == 409 and changed.json()["error"]["param"] == "Idempotency-Key"
    assert changed.headers["x-should-retry"] == "false"


def test_cancel_a_queued_job_then_cancel_again_is_409(
    api: Any, training_file: str, tiny_model_dir: Path
) -> None:
    job = _create(api, {"training_file": training_file, "model": str(tiny_model_dir)}).json()
    cancelled = api.client.post(f"/v1/fine-tunes/{job['id']}/cancel", headers=api.headers()).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    again = api.client.post(f"/v1/fine-tunes/{job['id']}/cancel", headers=api.headers())
    assert again.status_code == 409
    download = api.client.get(f"/v1/fine-tunes/{job['id']}/download", headers=api.headers())
    assert download.status_code == 409 and download.json()["error"]["param"] == "artifact"


def test_spec_schema_needs_no_key(api: Any) -> None:
    schema = api.client.get("/v1/fine-tunes/spec").json()
    assert schema["properties"]["dpo_beta"]["default"] == 0.1
    assert schema["properties"]["dpo_beta"]["group"] == "dpo"


def test_openapi_documents_every_route_with_the_error_envelope(api: Any) -> None:
    doc = api.client.get("/openapi.json").json()
    paths = doc["paths"]
    for path in (
        "/v1/files",
        "/v1/fine-tunes",
        "/v1/fine-tunes/{job_id}/download",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{job_id}/checkpoints",
        "/v1/keys/{key_id}",
    ):
        assert path in paths, path
    create = paths["/v1/fine-tunes"]["post"]
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "dpo_beta" in doc["components"]["schemas"][body_ref]["properties"]
    for path_item in paths.values():
        for operation in path_item.values():
            assert "422" not in operation["responses"]
            if operation.get("security"):
                assert "401" in operation["responses"]
