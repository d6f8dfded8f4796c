"""The fixtures every test directory can use (registered by tests/conftest.py as a plugin).

Each one builds on a helper module, so code that is not a fixture (a subprocess, a benchmark) can
do the same thing by calling the helper."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import models, postgres, s3
from helpers.data import ORCA_FILE, require_shared
from helpers.server import ServeProcess


@pytest.fixture
def preftune_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PREFTUNE_HOME of the test's own; the caller's key, URL and database are unset."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PREFTUNE_HOME", str(home))
    for var in ("PREFTUNE_API_KEY", "PREFTUNE_BASE_URL", "PREFTUNE_DATABASE_URL", "PREFTUNE_BLOB_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template (built once per session)."""
    return models.build_tiny(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def lively_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with larger weights, whose answers depend on the prompt (see `models.build_lively`)."""
    return models.build_lively(tiny_model_dir, tmp_path_factory.mktemp("lively") / "model")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data directory (skip, or fail under CI=true, when it is missing)."""
    return require_shared()


@pytest.fixture(scope="session")
def orca_path() -> Path:
    """The shared Orca DPO pairs: 284 real preference rows in preftune's format."""
    return require_shared(ORCA_FILE)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session; yields its SQLAlchemy base URL
    (add a database with `helpers.postgres.create_database`)."""
    with postgres.cluster(postgres.require_postgres()) as url:
        yield url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's standalone S3 server for the session; yields its endpoint URL (see `helpers.s3`)."""
    with s3.moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket on `s3_server` (`helpers.s3.s3_env(s3_server, bucket)` points a server at it)."""
    return s3.create_bucket(s3_server)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """`start_server(home=None, workers=0, env=None)`: a started `preftune serve` (see `ServeProcess`);
    every server it started is stopped when the test ends."""
    started: list[ServeProcess] = []

    def start(home: Path | None = None, workers: int = 0, env: dict[str, str] | None = None) -> ServeProcess:
        server = ServeProcess(home=home or tmp_path / f"serve-{len(started)}", workers=workers, env=env or {})
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
