"""Request limits: a body over the limit is a 413, a key over its rate or its concurrent uploads is a
429 with Retry-After, and one key's excess never slows another key down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from preftune.api.app import create_app
from preftune.api.limits import RateLimiter
from preftune.config import Settings
from preftune.service import keys as key_service


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[TestClient, str, str]]:
    settings = Settings(
        home=tmp_path / "home",
        max_request_bytes=4096,
        rate_limit_per_second=1,
        rate_limit_burst=5,
        max_concurrent_uploads=1,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        with app.state.db.session() as session:
            owner = key_service.create_owner(session, "o")
            _, key_a = key_service.create_key(session, owner.id, "a")
            _, key_b = key_service.create_key(session, owner.id, "b")
        yield client, key_a, key_b


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_body_over_the_limit_is_413_before_any_route_reads_it(limited: Any) -> None:
    client, key, _ = limited
    response = client.post(
        "/v1/fine-tunes", json={"training_file": "x" * 10_000, "model": "m"}, headers=_auth(key)
    )
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "body" and "4096" in response.json()["error"]["message"]
    # Without a Content-Length (chunked), the limit holds as the body streams.
    chunked = client.post(
        "/v1/fine-tunes", content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]), headers=_auth(key)
    )
    assert chunked.status_code == 413
    small = client.post("/v1/fine-tunes", json={"training_file": "nope", "model": "m"}, headers=_auth(key))
    assert small.status_code == 404  # under the limit the route answers as usual


def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not(limited: Any) -> None:
    client, key_a, key_b = limited
    codes = [client.get("/v1/files", headers=_auth(key_a)).status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and 429 in codes[5:], codes
    refused = client.get("/v1/files", headers=_auth(key_a))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "x-should-retry" not in refused.headers  # clients should retry a 429
    assert client.get("/v1/files", headers=_auth(key_b)).status_code == 200
    assert client.get("/openapi.json").status_code == 200  # outside /v1: not limited


def test_the_bucket_refills_at_its_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=2)
    assert limiter.take("k", now=0.0) == 0.0 and limiter.take("k", now=0.0) == 0.0
    assert limiter.take("k", now=0.0) == pytest.approx(0.5)
    assert limiter.take("k", now=0.5) == 0.0  # one token back after 1/rate seconds
    assert limiter.take("other", now=0.5) == 0.0


def test_a_second_concurrent_upload_of_one_key_is_429(limited: Any) -> None:
    client, key_a, key_b = limited
    app = client.app

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        gate = asyncio.Event()
        first: list[int] = []

        def call(key: str, body: bytes, wait: asyncio.Event | None, statuses: list[int]) -> Any:
            boundary = "B"
            payload = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n'.encode()
                + body
                + f"\r\n--{boundary}--\r\n".encode()
            )
            parts = [payload[:10], payload[10:]]

            async def receive() -> dict[str, Any]:
                if len(parts) == 1 and wait is not None:
                    await wait.wait()
                if parts:
                    chunk = parts.pop(0)
                    return {"type": "http.request", "body": chunk, "more_body": bool(parts)}
                await asyncio.sleep(3600)
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

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
                    (b"authorization", f"Bearer {key}".encode()),
                    (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                ],
                "client": ("127.0.0.1", 1),
                "server": ("testserver", 80),
                "state": {},
            }
            return app(scope, receive, send)

        held = asyncio.ensure_future(call(key_a, b"{}\n", gate, first))
        await asyncio.sleep(0.2)  # the first upload is now in progress, waiting for the rest of its body
        second: list[int] = []
        await call(key_a, b"{}\n", None, second)
        other: list[int] = []
        await call(key_b, b"{}\n", None, other)
        gate.set()
        await asyncio.wait_for(held, timeout=30)
        return first, second, other

    first, second, other = client.portal.call(scenario)
    assert second == [429], second
    assert first == [200] and other == [200], (first, other)
    # Once the first finished, the key may upload again.
    again = client.post("/v1/files", files={"file": ("d.jsonl", b"{}\n")}, headers=_auth(key_a))
    assert again.status_code == 200


def test_the_openapi_document_lists_the_limits(limited: Any) -> None:
    client, _, _ = limited
    doc = client.get("/openapi.json").json()
    upload = doc["paths"]["/v1/files"]["post"]["responses"]
    assert {"413", "429"} <= set(upload)
    assert "429" in doc["paths"]["/v1/fine-tunes/{job_id}"]["get"]["responses"]


def test_a_database_pool_timeout_is_503_with_retry_after_not_500(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from preftune.api.limits import install_limits

    app = FastAPI()
    install_limits(app, Settings(home=tmp_path))

    @app.get("/v1/busy")
    def busy() -> None:
        raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")

    response = TestClient(app).get("/v1/busy")
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "overloaded"
