"""The real application in-process, and an SDK `Client` talking to it through Starlette's
TestClient (optionally through a transport that injects failures the network would cause)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from preftune.api.app import create_app
from preftune.client import Client
from preftune.config import Settings


class FlakyTransport(httpx.BaseTransport):
    """Forwards to the app; `fail(request) -> status | None` turns an answer into that status
    *after* the app has handled the request (as a proxy error or a lost response would)."""

    def __init__(self, inner: httpx.BaseTransport, fail: Callable[[httpx.Request], int | None]) -> None:
        self.inner = inner
        self.fail = fail
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        response = self.inner.handle_request(request)
        content = response.read()
        status = self.fail(request)
        if status is not None:
            return httpx.Response(status, json={"error": {"message": "injected", "type": "server_error"}})
        return httpx.Response(response.status_code, headers=response.headers, content=content)


@dataclass
class SdkHarness:
    app_client: TestClient
    settings: Settings
    key: str

    def client(self, fail: Callable[[httpx.Request], int | None] | None = None, **kwargs: object) -> Client:
        transport = FlakyTransport(self.app_client._transport, fail or (lambda _r: None))
        http = httpx.Client(transport=transport)
        client = Client(api_key=self.key, base_url="http://testserver", http_client=http, **kwargs)  # type: ignore[arg-type]
        client.transport_log = transport.seen  # type: ignore[attr-defined]
        return client


@pytest.fixture
def sdk(tmp_path: Path) -> Iterator[SdkHarness]:
    from preftune.service import keys as key_service

    settings = Settings(home=tmp_path / "home")
    app = create_app(settings)
    with TestClient(app) as app_client:
        with app.state.db.session() as session:
            owner = key_service.create_owner(session, "sdk")
            _, key = key_service.create_key(session, owner.id, "sdk", is_admin=True)
        yield SdkHarness(app_client=app_client, settings=settings, key=key)
