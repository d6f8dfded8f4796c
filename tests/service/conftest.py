"""Fixtures for the service tests: a migrated database (SQLite, and PostgreSQL on the harness's
`postgres_server` when available), a blob store, two owners with keys, and uploaded files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.data import first_lines
from helpers.postgres import create_database
from preftune.config import Settings
from preftune.service import files as file_service
from preftune.service import keys as key_service
from preftune.store.blobs import BlobStore
from preftune.store.db import Database


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[Database]:
    """One migrated PostgreSQL database for the session; each test empties it (faster than creating one)."""
    database = Database(create_database(postgres_server))
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
    return first_lines(orca_path, tmp_path / "orca-small.jsonl", 12)


@pytest.fixture
def orca_file_id(db: Database, blobs: BlobStore, alice: Account, small_orca: Path) -> str:
    with db.session() as session:
        record = file_service.create_file(
            session, alice.owner_id, blobs.stage_path(small_orca), blobs=blobs, filename="orca.jsonl"
        )
    assert record.status == "processed"
    return record.id
