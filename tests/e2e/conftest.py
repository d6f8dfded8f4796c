"""Fixtures that start the real server: `preftune serve` as a subprocess on a free loopback
port, with its own PREFTUNE_HOME and one runner, driven by the real clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

STARTUP_TIMEOUT = 240.0  # a busy CI machine can take long to import torch and migrate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    home: Path
    port: int
    workers: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    database_url: str | None = None  # None: SQLite in the home

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return (self.home / "credentials").read_text(encoding="utf-8").splitlines()[0].strip()

    def start(self) -> None:
        self.env = {
            **os.environ,
            "PREFTUNE_HOME": str(self.home),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "WANDB_MODE": "offline",
            # A lease long enough that a busy CI machine never loses a healthy job to expiry.
            "PREFTUNE_LEASE_SECONDS": "60",
            "PREFTUNE_HEARTBEAT_SECONDS": "2",
        }
        for var in ("PREFTUNE_API_KEY", "PREFTUNE_BASE_URL", "PREFTUNE_DATABASE_URL"):
            self.env.pop(var, None)
        if self.database_url is not None:
            self.env["PREFTUNE_DATABASE_URL"] = self.database_url
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "preftune.cli.main",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the server and its runners
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"preftune serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if (
                    httpx.get(f"{self.base_url}/openapi.json", timeout=2).status_code == 200
                    and (self.home / "credentials").is_file()
                ):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"preftune serve did not answer within {STARTUP_TIMEOUT}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the server and its runners at once: no shutdown code runs, as in a power cut."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Stop the server and start it again on the same home (on a new free port)."""
        self.stop()
        self.port = free_port()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-6000:]


def _server(tmp: Path, workers: int) -> RunningServer:
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    return RunningServer(home=home, port=free_port(), workers=workers, log_path=tmp / "server.log")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server with one runner, shared by the end-to-end tests of a session."""
    running = _server(tmp_path_factory.mktemp("e2e-server"), workers=1)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server of the test's own (for restarts and isolation), without runners."""
    running = _server(tmp_path, workers=0)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client_env(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> RunningServer:
    """Point the SDK and CLI of this process at the shared server."""
    monkeypatch.setenv("PREFTUNE_BASE_URL", server.base_url)
    monkeypatch.setenv("PREFTUNE_API_KEY", server.api_key)
    return server
