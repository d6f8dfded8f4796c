"""`/v1/evaluations` on the real app, run by a real runner: queued, evaluated, owned by the key's owner."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from helpers.data import read_rows
from preftune.runner.worker import Runner


def _upload(api: Any, rows: list[dict[str, Any]], key: str | None = None) -> str:
    content = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    response = api.client.post(
        "/v1/files",
        files={"file": ("held-out.jsonl", content, "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=api.headers(key),
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_an_evaluation_is_queued_run_and_shown_to_its_owner_only(
    api: Any, tiny_model_dir: Path, orca_path: Path
) -> None:
    file_id = _upload(api, read_rows(orca_path, 4, offset=200))
    body = {"model": str(tiny_model_dir), "file": file_id, "max_length": 64, "batch_size": 2}
    created = api.client.post("/v1/evaluations", json=body, headers=api.headers())
    assert created.status_code == 200, created.text
    evaluation = created.json()
    assert evaluation["status"] == "queued" and evaluation["params"]["beta"] == 0.1

    assert Runner(api.settings).run_evaluation_once() == "completed"
    done = api.client.get(f"/v1/evaluations/{evaluation['id']}", headers=api.headers()).json()
    assert done["status"] == "completed" and done["progress"] == {"done": 4, "total": 4}
    result = done["result"]
    assert result["n_pairs"] == 4 and result["file"] == file_id
    assert result["base"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert 0.0 <= result["model"]["preference_accuracy"] <= 1.0
    listed = api.client.get("/v1/evaluations", headers=api.headers()).json()
    assert [e["id"] for e in listed["data"]] == [evaluation["id"]]

    # Another owner sees neither the evaluation nor the file.
    assert (
        api.client.get(f"/v1/evaluations/{evaluation['id']}", headers=api.headers(api.key_b)).status_code
        == 404
    )
    assert api.client.get("/v1/evaluations", headers=api.headers(api.key_b)).json()["data"] == []
    theirs = api.client.post("/v1/evaluations", json=body, headers=api.headers(api.key_b))
    assert theirs.status_code == 404 and theirs.json()["error"]["param"] == "file"


def test_a_bad_evaluation_request_names_its_parameter_and_queues_nothing(
    api: Any, tiny_model_dir: Path, orca_path: Path
) -> None:
    file_id = _upload(api, read_rows(orca_path, 3))
    cases = [
        ({"model": str(tiny_model_dir), "file": file_id, "beta": 0}, "beta"),
        ({"model": "no-such-model", "file": file_id}, "model"),
        ({"model": str(tiny_model_dir), "file": "file-nope"}, "file"),
    ]
    for body, param in cases:
        response = api.client.post("/v1/evaluations", json=body, headers=api.headers())
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["param"] == param, response.text
    assert api.client.get("/v1/evaluations", headers=api.headers()).json()["data"] == []
    assert Runner(api.settings).run_evaluation_once() is None
