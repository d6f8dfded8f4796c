"""The real application in-process (Starlette's TestClient) on a temporary PREFTUNE_HOME,
with two owners' keys for isolation checks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from preftune.api.app import create_app
from preftune.config import Settings


@dataclass
class ApiHarness:
    client: TestClient
    settings: Settings
    key_a: str
    key_b: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key_a}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    from preftune.service import keys as key_service

    settings = Settings(home=tmp_path / "home", max_upload_bytes=256 * 1024)
    app = create_app(settings)
    with TestClient(app) as client:
        with app.state.db.session() as session:
            owner_a = key_service.create_owner(session, "alice")
            _, key_a = key_service.create_key(session, owner_a.id, "a", is_admin=True)
            owner_b = key_service.create_owner(session, "bob")
            _, key_b = key_service.create_key(session, owner_b.id, "b")
        yield ApiHarness(client=client, settings=settings, key_a=key_a, key_b=key_b)
