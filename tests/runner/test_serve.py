"""`preftune serve`: the API and its local runners start together, the local key is written, and
Ctrl-C (SIGINT to the process group, as a terminal sends it) stops everything cleanly."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_serve_starts_api_and_runners_and_stops_on_ctrl_c(preftune_home: Path) -> None:
    port = _free_port()
    env = os.environ | {"PREFTUNE_HOME": str(preftune_home)}
    server = subprocess.Popen(
        [sys.executable, "-m", "preftune.cli.main", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        credentials = preftune_home / "credentials"
        deadline = time.monotonic() + 300
        status = None
        while status != 200:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else "server exited"
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
            if not credentials.exists():
                continue
            key = credentials.read_text().splitlines()[0]
            try:
                status = httpx.get(
                    f"http://127.0.0.1:{port}/v1/files",
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=10,
                ).status_code
            except httpx.TransportError:
                continue
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        assert httpx.get(f"http://127.0.0.1:{port}/v1/files", timeout=10).status_code == 401
        runners = [
            pid for pid in _children(server.pid) if "run_runner_process" in _cmdline(pid) or _is_spawn(pid)
        ]
        assert len(runners) >= 2, "two runner processes should run next to the API"
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            code = server.wait(timeout=120)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
    assert code == 0
    assert not any(_alive(pid) for pid in runners)


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _is_spawn(pid: int) -> bool:
    return "multiprocessing.spawn" in _cmdline(pid) and "resource_tracker" not in _cmdline(pid)


def test_runners_stop_when_the_server_is_killed_outright(preftune_home: Path) -> None:
    """SIGKILL gives `preftune serve` no chance to stop its runners: they notice and stop themselves."""
    port = _free_port()
    env = os.environ | {"PREFTUNE_HOME": str(preftune_home)}
    server = subprocess.Popen(
        [sys.executable, "-m", "preftune.cli.main", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runners: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not runners:  # the API answers and the runner process is there
            assert server.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/files", timeout=10)
            except httpx.TransportError:
                continue
            runners = [pid for pid in _children(server.pid) if _is_spawn(pid)]
        server.kill()  # the server process alone: its runners get no signal
        server.wait(timeout=30)
        deadline = time.monotonic() + 120
        while any(_alive(pid) for pid in runners):
            assert time.monotonic() < deadline, "a runner outlived its killed server by two minutes"
            time.sleep(0.5)
    finally:
        for pid in runners:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
