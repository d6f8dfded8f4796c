"""Bad data gets a clear answer and leaves nothing half-done.

Each bad upload is a 4xx, or a file in status `error` whose report names the line; the server stays
up, and a refused upload leaves no blob, no staged part and no row. Each bad job create is a 4xx
naming the parameter with nothing queued; each bad chat request is a 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

GOOD = {
    "input": {"messages": [{"role": "user", "content": "Say hi."}]},
    "preferred_output": [{"role": "assistant", "content": "Hi!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}
GOOD_LINE = json.dumps(GOOD).encode()


def _state(api: Any) -> tuple[list[str], list[Path], list[Path]]:
    """(file ids, blobs in place, staged parts) of the whole server."""
    root = api.settings.blobs_dir
    placed = sorted(p for p in root.glob("??/*") if p.is_file())
    staged = sorted((root / "tmp").glob("*")) if (root / "tmp").is_dir() else []
    with api.client.app.state.db.session() as session:
        from sqlalchemy import select

        from preftune.store.models import File

        ids = sorted(session.scalars(select(File.id)))
    return ids, placed, staged


def _upload(api: Any, content: bytes, filename: str = "data.jsonl") -> Any:
    return api.client.post(
        "/v1/files",
        files={"file": (filename, content, "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=api.headers(),
    )


def _alive(api: Any) -> None:
    assert api.client.get("/v1/files", headers=api.headers()).status_code == 200


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        (b"", None, "empty"),
        (b"\n\n  \n", None, "example"),
        (GOOD_LINE + b"\n" + b'{"input": {"mess\xff\xfeages"}' + b"\n" + GOOD_LINE * 1, 2, "utf-8"),
        (b"\n".join([GOOD_LINE] * 3) + b'\n{"input": {"messages": [{"role": "us', 4, "json"),
        (
            b"\n".join([GOOD_LINE] * 3)
            + b"\n"
            + json.dumps(dict(GOOD, preferred_output=[{"role": "user", "content": "x"}])).encode(),
            4,
            "role",
        ),
        (
            b"\n".join([GOOD_LINE] * 3)
            + b"\n"
            + json.dumps(dict(GOOD, input={"messages": [{"role": "robot", "content": "x"}]})).encode(),
            4,
            "role",
        ),
    ],
    ids=["empty", "blank-lines", "invalid-utf8", "truncated-last-line", "wrong-output-role", "unknown-role"],
)
def test_bad_files_are_kept_in_error_with_the_line_named(
    api: Any, content: bytes, line: int | None, words: str
) -> None:
    response = _upload(api, content)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "error", body
    report = api.client.get(f"/v1/files/{body['id']}/report", headers=api.headers()).json()
    text = json.dumps(report).lower()
    assert words in text, report
    if line is not None:
        assert any(e.get("line") == line for e in report["errors"]), report["errors"]
    _alive(api)


def test_a_utf8_bom_is_accepted_or_named(api: Any) -> None:
    response = _upload(api, b"\xef\xbb\xbf" + b"\n".join([GOOD_LINE] * 3) + b"\n")
    assert response.status_code == 200, response.text
    body = response.json()
    # Either way is a clear answer; a BOM must not turn into an unexplained failure of line 1.
    if body["status"] == "error":
        assert "bom" in (body["status_details"] or "").lower(), body


def test_a_30_mb_single_line_is_refused_with_the_line_named(api_big: Any) -> None:
    huge = b'{"input": {"messages": [{"role": "user", "content": "' + b"a" * (30 * 1024 * 1024) + b'"}]}}'
    response = _upload(api_big, b"\n".join([GOOD_LINE] * 3 + [huge]) + b"\n")
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["status"] == "error" and "line 4" in (body["status_details"] or ""), body
    # The answer quotes the line's problem, not its 30 MB.
    assert len(response.content) < 64 * 1024
    _alive(api_big)


@pytest.mark.parametrize(
    "filename", ["../../etc/passwd", "..\\..\\evil.jsonl", "a\x00b.jsonl", "/abs/x.jsonl", ".."]
)
def test_file_names_cannot_escape_or_smuggle_bytes(api: Any, filename: str) -> None:
    response = _upload(api, b"\n".join([GOOD_LINE] * 3) + b"\n", filename=filename)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        stored = response.json()["filename"]
        assert (
            "/" not in stored
            and "\\" not in stored
            and "\x00" not in stored
            and stored not in ("", ".", "..")
        )
        # Downloading gives a safe Content-Disposition.
        content = api.client.get(f"/v1/files/{response.json()['id']}/content", headers=api.headers())
        assert content.status_code == 200
        assert ".." not in content.headers.get("content-disposition", "").replace("...", "")
    else:
        assert response.json()["error"]["param"] == "file"
    assert not list(api.settings.home.parent.glob("etc")), "an upload wrote outside PREFTUNE_HOME"
    _alive(api)


def test_an_upload_over_the_limit_leaves_nothing(api: Any) -> None:
    before = _state(api)
    response = _upload(api, GOOD_LINE * (api.settings.max_upload_bytes // len(GOOD_LINE) + 10))
    assert response.status_code == 413 and response.json()["error"]["param"] == "file"
    assert _state(api) == before
    _alive(api)


def test_a_client_disconnecting_mid_upload_leaves_nothing(api: Any) -> None:
    """Half a multipart body, then the client goes away: no row, no blob, no staged part."""
    before = _state(api)
    app = api.client.app
    boundary = "XyZ"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    chunks = [head, GOOD_LINE + b"\n", GOOD_LINE[:20]]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": True}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/files",
        "raw_path": b"/v1/files",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {api.key_a}".encode()),
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", b"100000"),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
        "app": app,
    }
    api.client.portal.call(_call_app, app, scope, receive, send)
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert not statuses or statuses[0] < 500, sent
    assert _state(api) == before
    _alive(api)


async def _call_app(app: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    # The server may give up on a gone client by raising; what matters is what it left behind.
    with contextlib.suppress(OSError, RuntimeError):
        await asyncio.wait_for(app(scope, receive, send), timeout=30)


@pytest.mark.parametrize(
    ("extra", "status", "param"),
    [
        ({"batch_size": 0}, 400, "batch_size"),
        ({"dpo_beta": 0}, 400, "dpo_beta"),
        ({"dpo_beta": -0.5}, 400, "dpo_beta"),
        ({"learning_rate": "NaN"}, 400, "learning_rate"),
        ({"learning_rate": "Infinity"}, 400, "learning_rate"),
        ({"learning_rate": 0}, 400, "learning_rate"),
        ({"n_epochs": 1_000_000_000}, 400, "n_epochs"),
        ({"max_steps": -1}, 400, "max_steps"),
        ({"model": "no-such-model"}, 404, "model"),
        ({"model": "../../etc"}, 404, "model"),
    ],
)
def test_bad_job_creates_name_the_parameter_and_queue_nothing(
    api: Any, tiny_model_dir: Path, extra: dict[str, Any], status: int, param: str
) -> None:
    upload = _upload(api, b"\n".join([GOOD_LINE] * 4) + b"\n").json()
    body = {"training_file": upload["id"], "model": str(tiny_model_dir), **extra}
    # NaN and Infinity are not JSON; clients that send them send these tokens.
    raw = json.dumps(body).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    for route in ("/v1/fine-tunes",):
        response = api.client.post(
            route, content=raw, headers={**api.headers(), "Content-Type": "application/json"}
        )
        assert response.status_code == status, (extra, response.text)
        assert response.json()["error"]["param"] == param, (extra, response.text)
    assert api.client.get("/v1/fine-tunes", headers=api.headers()).json()["data"] == []


def test_another_owners_file_cannot_be_trained_on(api: Any, tiny_model_dir: Path) -> None:
    upload = _upload(api, b"\n".join([GOOD_LINE] * 4) + b"\n").json()
    response = api.client.post(
        "/v1/fine-tunes",
        json={"training_file": upload["id"], "model": str(tiny_model_dir)},
        headers=api.headers(api.key_b),
    )
    assert response.status_code == 404 and response.json()["error"]["param"] == "training_file"
    assert api.client.get("/v1/fine-tunes", headers=api.headers(api.key_b)).json()["data"] == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "MODEL", "messages": []}, "messages"),
        ({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, "max_tokens"),
        (
            {"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12},
            "max_tokens",
        ),
        ({"model": "MODEL", "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"model": "MODEL", "messages": [{"role": "user"}]}, "messages"),
        ({"model": "MODEL", "messages": "hi"}, "messages"),
    ],
)
def test_bad_chat_requests_are_4xx(api: Any, tiny_model_dir: Path, body: dict[str, Any], param: str) -> None:
    # Imported under a name, as `preftune models import` does, so the requests reach their real checks.
    imported = api.settings.models_dir / "tiny"
    if not imported.exists():
        imported.parent.mkdir(parents=True, exist_ok=True)
        imported.symlink_to(tiny_model_dir, target_is_directory=True)
    body = {**body, "model": "tiny" if body["model"] == "MODEL" else body["model"]}
    response = api.client.post("/v1/chat/completions", json=body, headers=api.headers())
    assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
    error = response.json()["error"]
    assert error["param"] and error["param"].startswith(param), (body, error)


@pytest.fixture
def api_big(tmp_path: Path) -> Any:
    """The app with a 64 MB upload limit, for the 30 MB line."""
    from fastapi.testclient import TestClient

    from preftune.api.app import create_app
    from preftune.config import Settings
    from preftune.service import keys as key_service

    settings = Settings(home=tmp_path / "big", max_upload_bytes=64 * 1024 * 1024)
    app = create_app(settings)
    with TestClient(app) as client:
        with app.state.db.session() as session:
            owner = key_service.create_owner(session, "big")
            _, key = key_service.create_key(session, owner.id, "k")

        class Harness:
            def __init__(self) -> None:
                self.client, self.settings, self.key_a = client, settings, key

            def headers(self, other: str | None = None) -> dict[str, str]:
                return {"Authorization": f"Bearer {other or key}"}

        yield Harness()
