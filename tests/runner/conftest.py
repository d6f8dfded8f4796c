"""Fixtures for the runner tests: an embedded service (SQLite) with a short lease, an owner, the orca sample."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.data import first_lines
from preftune.config import Settings
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.service import keys as key_service
from preftune.store.blobs import BlobStore
from preftune.store.db import Database


@pytest.fixture
def settings(preftune_home: Path) -> Settings:
    # A short lease, fast heartbeats and a short retry back-off so that recovery happens within seconds.
    return Settings(
        home=preftune_home,
        lease_seconds=3.0,
        heartbeat_seconds=0.5,
        max_job_attempts=3,
        retry_backoff_seconds=1.0,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def blobs(settings: Settings) -> BlobStore:
    return BlobStore(settings.blobs_dir)


@pytest.fixture
def owner_id(db: Database) -> str:
    with db.session() as session:
        return key_service.create_owner(session, "alice").id


@pytest.fixture
def orca_file_id(db: Database, blobs: BlobStore, owner_id: str, orca_path: Path, tmp_path: Path) -> str:
    small = first_lines(orca_path, tmp_path / "orca-16.jsonl", 16)
    with db.session() as session:
        return file_service.create_file(
            session, owner_id, blobs.stage_path(small), blobs=blobs, filename="orca.jsonl"
        ).id


@dataclass
class JobFactory:
    db: Database
    settings: Settings
    owner_id: str
    file_id: str
    model: Path

    def __call__(self, **params: object) -> str:
        base: dict[str, object] = {"batch_size": 2, "max_length": 96, "lora_r": 4, "lora_alpha": 8}
        with self.db.session() as session:
            return job_service.create_job(
                session,
                self.owner_id,
                model=str(self.model),
                training_file=self.file_id,
                settings=self.settings,
                params=base | params,
            ).id


@pytest.fixture
def make_job(
    db: Database, settings: Settings, owner_id: str, orca_file_id: str, tiny_model_dir: Path
) -> JobFactory:
    return JobFactory(db, settings, owner_id, orca_file_id, tiny_model_dir)
