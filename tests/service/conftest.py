"""Fixtures for the service tests: a migrated database (SQLite, and PostgreSQL when available),
a blob store, two owners with keys, and uploaded files."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from preftune.config import Settings
from preftune.service import files as file_service
from preftune.service import keys as key_service
from preftune.store.blobs import BlobStore
from preftune.store.db import Database

_db_counter = itertools.count()


def _postgres_database(base_url: str) -> str:
    import psycopg

    name = f"t{os.getpid()}_{next(_db_counter)}_{int(time.time() * 1000) % 100000}"
    dsn = base_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[Database]:
    """One migrated PostgreSQL database for the session; each test empties it (faster than creating one)."""
    database = Database(_postgres_database(postgres_server))
    database.migrate()
    yield database
    database.dispose()


def _empty(database: Database) -> None:
    from sqlalchemy import text

    from preftune.store.models import Base

    names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with database.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, preftune_home: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{preftune_home / 'preftune.db'}"
    database: Database = request.getfixturevalue("postgres_database")
    _empty(database)
    return database.url


@pytest.fixture
def settings(preftune_home: Path, database_url: str) -> Settings:
    return Settings(home=preftune_home, database_url=database_url, lease_seconds=30, max_job_attempts=3)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def blobs(settings: Settings) -> BlobStore:
    return BlobStore(settings.blobs_dir)


@dataclass
class Account:
    owner_id: str
    key: str
    caller: key_service.Caller


def _account(db: Database, name: str) -> Account:
    with db.session() as session:
        owner = key_service.create_owner(session, name)
        _, secret = key_service.create_key(session, owner.id, name)
        caller = key_service.authenticate(session, secret)
    return Account(owner.id, secret, caller)


@pytest.fixture
def alice(db: Database) -> Account:
    return _account(db, "alice")


@pytest.fixture
def bob(db: Database) -> Account:
    return _account(db, "bob")


@pytest.fixture
def small_orca(tmp_path: Path, orca_path: Path) -> Path:
    """The first 12 pairs of the shared orca sample (enough to validate and train a few steps)."""
    lines = orca_path.read_text(encoding="utf-8").splitlines()[:12]
    path = tmp_path / "orca-small.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def orca_file_id(db: Database, blobs: BlobStore, alice: Account, small_orca: Path) -> str:
    with db.session() as session:
        record = file_service.create_file(
            session, alice.owner_id, blobs.stage_path(small_orca), blobs=blobs, filename="orca.jsonl"
        )
    assert record.status == "processed"
    return record.id
