"""Fixtures that start the real server (`preftune serve` as a subprocess, see helpers.server), driven
by the real clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.server import ServeProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One server with one runner, shared by the end-to-end tests of a session."""
    running = ServeProcess(home=tmp_path_factory.mktemp("e2e-server") / "home", workers=1)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServeProcess]:
    """A server of the test's own (for restarts and isolation), without runners; the test starts it."""
    running = ServeProcess(home=tmp_path / "home", workers=0)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client_env(server: ServeProcess, monkeypatch: pytest.MonkeyPatch) -> ServeProcess:
    """Point the SDK and CLI of this process at the shared server."""
    monkeypatch.setenv("PREFTUNE_BASE_URL", server.base_url)
    monkeypatch.setenv("PREFTUNE_API_KEY", server.api_key)
    return server
