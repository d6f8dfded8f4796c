"""The database layer: migrations on start (idempotent), SQLite pragmas, and the schema matching the models."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from preftune.store.db import Database
from preftune.store.models import Base


def test_migrations_create_every_table_and_can_run_again(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'sub' / 'preftune.db'}")
    db.migrate()
    db.migrate()
    tables = set(inspect(db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables and "alembic_version" in tables
    for name, table in Base.metadata.tables.items():
        columns = {c["name"] for c in inspect(db.engine).get_columns(name)}
        assert columns == {c.name for c in table.columns}, name
    db.dispose()


def test_migrations_match_the_models(tmp_path: Path) -> None:
    """A model change without a migration is caught here (autogenerate finds nothing to do)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    db = Database(f"sqlite:///{tmp_path / 'preftune.db'}")
    db.migrate()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    db.dispose()


def test_sqlite_runs_with_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'preftune.db'}")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    db.dispose()


def test_processes_starting_together_migrate_once(tmp_path: Path) -> None:
    """`preftune serve` and `preftune worker` started at the same moment both migrate the same new database."""
    import threading

    url = f"sqlite:///{tmp_path / 'preftune.db'}"
    errors: list[BaseException] = []

    def start() -> None:
        db = Database(url)
        try:
            db.migrate()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = Database(url)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    db.dispose()


@pytest.mark.postgres
def test_advisory_lock_spans_connections_and_guards_blob_references(
    postgres_server: str, tmp_path: Path
) -> None:
    """The blob store's `references()` lock on PostgreSQL: held by one holder at a time across
    connections (so across machines), released when the block ends."""
    from helpers.postgres import create_database
    from preftune.store.blobs import BlobStore

    first = Database(create_database(postgres_server))
    second = Database(first.url)
    store = BlobStore(tmp_path / "blobs", lock=second.advisory_lock)
    order: list[str] = []
    try:
        with first.advisory_lock():
            waiter = threading.Thread(target=lambda: _hold(store, order))
            waiter.start()
            time.sleep(1.0)
            order.append("first releases")
        waiter.join(30)
        assert order == ["first releases", "second holds"]
    finally:
        first.dispose()
        second.dispose()


def _hold(store: object, order: list[str]) -> None:
    with store.references():  # type: ignore[attr-defined]
        order.append("second holds")
