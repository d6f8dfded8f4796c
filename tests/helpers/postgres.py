"""A throwaway PostgreSQL cluster from Debian's server binaries, and fresh databases on it."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers.infra import require
from helpers.ports import free_port

_db_counter = itertools.count()


def bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/*/bin` that has `initdb`, or None."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


def require_postgres() -> Path:
    """The binaries' directory and an importable psycopg, or a skip (a failure under `CI=true`)."""
    found = bin_dir()
    require(
        found is not None,
        "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)",
    )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require(False, "psycopg is not installed (pip install -e '.[dev]')")
    assert found is not None
    return found


def _as_postgres_user(argv: list[str]) -> list[str]:
    # initdb refuses to run as root: run the server binaries as the postgres system user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@contextmanager
def cluster(binaries: Path) -> Iterator[str]:
    """A new cluster on a free loopback port (fsync off: it is thrown away); yields a SQLAlchemy base
    URL (`postgresql+psycopg://postgres@127.0.0.1:PORT`) and removes the cluster afterwards."""
    root = Path(tempfile.mkdtemp(prefix="preftune-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    try:
        subprocess.run(
            _as_postgres_user(
                [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            _as_postgres_user(
                [
                    str(binaries / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(root / "log"),
                    "-w",
                    "-o",
                    f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off -c synchronous_commit=off",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def create_database(base_url: str) -> str:
    """A new, empty database on the cluster at `base_url`; returns its SQLAlchemy URL."""
    import psycopg

    name = f"t{os.getpid()}_{next(_db_counter)}_{int(time.time() * 1000) % 100000}"
    dsn = base_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"
