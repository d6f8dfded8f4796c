"""`preftune serve`: the API and its local runners start together, the local key is written, and
Ctrl-C (SIGINT to the process group, as a terminal sends it) stops everything cleanly."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import httpx

from helpers.server import ServeProcess


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
    server = ServeProcess(home=preftune_home, workers=2, env={"PREFTUNE_HEARTBEAT_SECONDS": "5"})
    runners: list[int] = []
    try:
        server.start()
        credentials = preftune_home / "credentials"
        with server.api() as api:
            assert api.get("/files").status_code == 200
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        assert httpx.get(f"{server.base_url}/v1/files", timeout=10).status_code == 401
        assert server.process is not None
        runners = [
            pid
            for pid in _children(server.process.pid)
            if "run_runner_process" in _cmdline(pid) or _is_spawn(pid)
        ]
        assert len(runners) >= 2, "two runner processes should run next to the API"
    finally:
        # SIGINT to the process group, as a terminal's Ctrl-C sends it.
        code = server.stop(signal.SIGINT, timeout=120)
    assert code == 0, server.log()
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
    server = ServeProcess(home=preftune_home, workers=1, env={"PREFTUNE_HEARTBEAT_SECONDS": "5"})
    runners: list[int] = []
    try:
        server.start()
        assert server.process is not None
        deadline = time.monotonic() + 300
        while not (runners := [pid for pid in _children(server.process.pid) if _is_spawn(pid)]):
            assert server.process.poll() is None, server.log()
            assert time.monotonic() < deadline, "the runner process did not start"
            time.sleep(0.5)
        server.process.kill()  # the server process alone: its runners get no signal
        server.process.wait(timeout=30)
        deadline = time.monotonic() + 120
        while any(_alive(pid) for pid in runners):
            assert time.monotonic() < deadline, "a runner outlived its killed server by two minutes"
            time.sleep(0.5)
    finally:
        for pid in runners:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.kill_group()
