"""The dialect layer's own rules: every dialect names every job state, and the routes declare the
caller and the session through the shared `Annotated` aliases rather than their own `Depends`."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import preftune.api.dialects
from preftune.api.dialects import states
from preftune.service.states import JobStatus

DIALECTS_DIR = Path(preftune.api.dialects.__file__).resolve().parent


@pytest.mark.parametrize("dialect", sorted(states.ALL))
def test_every_dialect_names_every_state(dialect: str) -> None:
    assert set(states.ALL[dialect]) == set(JobStatus)


def test_terminal_states_stay_distinguishable_in_every_dialect() -> None:
    # A client waits for completed vs failed vs cancelled: those must never share a word.
    for dialect, words in states.ALL.items():
        finals = {words[JobStatus.COMPLETED], words[JobStatus.ERROR], words[JobStatus.CANCELLED]}
        assert len(finals) == 3, dialect


def test_routes_take_the_caller_and_session_from_the_shared_aliases() -> None:
    found = []
    for path in sorted(DIALECTS_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Depends":
                names = {getattr(a, "id", None) for a in node.args}
                if names & {"get_owner", "get_db", "get_settings", "get_blobs", "get_database"}:
                    found.append(f"{path.relative_to(DIALECTS_DIR)}:{node.lineno}")
    assert found == [], "use api.deps.CallerDep / SessionDep / ... instead: " + ", ".join(found)


def test_a_shared_path_answers_in_the_dialect_the_request_speaks(api: Any) -> None:
    """Native clients keep native shapes on paths Together shares; Together's client (its User-Agent,
    an ft- job id, or the header) gets Together's; the header wins over both."""
    http, headers = api.client, api.headers()
    pair = (
        '{"input": {"messages": [{"role": "user", "content": "Hi"}]}, '
        '"preferred_output": [{"role": "assistant", "content": "Hello!"}], '
        '"non_preferred_output": [{"role": "assistant", "content": "No."}]}\n'
    )
    # A file whose name starts like a Together job id is still the native client's file.
    up = http.post(
        "/v1/files", headers=headers, files={"file": ("p.jsonl", pair * 3)}, data={"name": "ft-data"}
    )
    assert up.status_code == 200, up.text
    assert "FileType" not in http.get("/v1/files/ft-data", headers=headers).json()

    together_ua = {**headers, "User-Agent": "Together/Python 3.1.1"}
    assert http.get("/v1/files/ft-data", headers=together_ua).json()["FileType"] == "jsonl"
    forced_native = {**together_ua, "X-Preftune-Dialect": "native"}
    assert "FileType" not in http.get("/v1/files/ft-data", headers=forced_native).json()
    assert "data" in http.get("/v1/files", headers={**headers, "X-Preftune-Dialect": "together"}).json()

    # The spec route is never shadowed by Together's /fine-tunes/{job_id}.
    assert http.get("/v1/fine-tunes/spec", headers=together_ua).status_code == 200
    # An ft- id is Together's whatever the client: 404 in the shared envelope either way.
    missing = http.get("/v1/fine-tunes/ft-0123456789abcdef01234567", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "job_id"
