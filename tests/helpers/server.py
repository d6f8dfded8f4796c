"""Starting and stopping the server in tests.

- `ServeProcess`: the real `preftune serve` as a subprocess on a free loopback port, in its own process
  group (so stopping it also ends its runners), logging to a file that failures quote.
- `serve_in_thread(app)`: an application object served by uvicorn in a thread of the test process, for
  tests that look at the app's state (the engine, the database) while it serves.
- `child_env(home)` and `preftune_command(...)`: the environment and argv of any other `preftune`
  process a test starts (`train`, `worker`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from helpers.ports import free_port

# A busy shared 2-core machine can take minutes to import torch and migrate the database.
STARTUP_TIMEOUT = 300.0
# Settings of the test process's own user that must not leak into a server or CLI a test starts.
_CALLER_VARS = ("PREFTUNE_API_KEY", "PREFTUNE_BASE_URL", "PREFTUNE_DATABASE_URL", "PREFTUNE_BLOB_URL")


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a `preftune` child on `home`: offline, without the caller's key,
    URL or database, plus `extra` (e.g. PREFTUNE_LEASE_SECONDS="3")."""
    env = {
        **os.environ,
        "PREFTUNE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for var in _CALLER_VARS:
        env.pop(var, None)
    env.update(extra)
    return env


def preftune_command(*args: str) -> list[str]:
    """argv that runs the `preftune` CLI of this checkout with the test's interpreter."""
    return [sys.executable, "-m", "preftune.cli.main", *args]


@dataclass
class ServeProcess:
    """`preftune serve --workers N` on `home`. `start()` returns once the API answers and the admin
    key is written; `stop()` signals the whole process group and returns the exit code."""

    home: Path
    workers: int = 0
    # Extra environment for the server, on top of `child_env(home)` and the defaults below.
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.log_path is None:
            self.log_path = self.home.with_name(f"{self.home.name}.serve.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        """The admin key `preftune serve` wrote to HOME/credentials on first start."""
        return (self.home / "credentials").read_text(encoding="utf-8").splitlines()[0].strip()

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}

    def api(self, key: str | None = None) -> httpx.Client:
        """An httpx client on `/v1` with `key` (default: the admin key)."""
        return httpx.Client(base_url=f"{self.base_url}/v1", headers=self.headers(key), timeout=60)

    def start(self) -> None:
        # A lease long enough that a busy CI machine never loses a healthy job to expiry; a retry after 1 s.
        defaults = {
            "PREFTUNE_LEASE_SECONDS": "60",
            "PREFTUNE_HEARTBEAT_SECONDS": "2",
            "PREFTUNE_RETRY_BACKOFF_SECONDS": "1",
        }
        env = child_env(self.home, **(defaults | self.env))
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                preftune_command(
                    "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)
                ),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the server and its runners
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"preftune serve exited with {self.process.returncode}:\n{self.log()}")
            if self._answers():
                return
            time.sleep(0.2)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"preftune serve did not answer within {STARTUP_TIMEOUT}s:\n{self.log()}")

    def _answers(self) -> bool:
        try:
            up = httpx.get(f"{self.base_url}/openapi.json", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
        return up and (self.home / "credentials").is_file()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send `sig` to the server's process group and wait up to `timeout` s (then SIGKILL).
        Returns the exit code (None if it was never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the server's process group (runners whose server is gone)."""
        if self.process is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the server and its runners at once: no shutdown code runs, as in a power cut."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Stop the server and start it again on the same home (on a new free port)."""
        self.stop()
        self.port = free_port()
        self.start()

    def log(self) -> str:
        """The end of the server's log, for failure messages."""
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-6000:]


def self_signed_cert(dest: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, and the key: (cert.pem, key.pem) in `dest`.
    Trust it with `SSL_CERT_FILE=cert.pem` (httpx reads it) for clients that insist on https."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    dest.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = dest / "cert.pem", dest / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@contextmanager
def serve_in_thread(app: Any, port: int | None = None, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Serve the ASGI `app` with uvicorn on loopback in a daemon thread; yields its base URL.
    The app's lifespan runs (startup before the first request, shutdown on exit). With `tls`
    (cert, key from `self_signed_cert`) it serves https."""
    import uvicorn

    port = port or free_port()
    ssl = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **ssl)  # type: ignore[arg-type]
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
