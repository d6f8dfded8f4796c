"""Engine and session factory for SQLite (the embedded default) and PostgreSQL, with no code change.

SQLite gets WAL (readers never block the writer), a busy timeout (writers queue instead of
failing with "database is locked") and foreign keys on, set on every new connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from preftune.config import Settings
from preftune.errors import InsufficientStorageError, is_disk_full

# The advisory-lock key of the blob store's `references()` lock (any fixed 64-bit number).
BLOB_REFERENCES_LOCK = 0x70726566_74756E65  # "preftune"

# Raised when every pooled connection stayed busy for the pool's timeout; the api answers it with a 503.
__all__ = ["Database", "PoolTimeout", "make_engine", "open_database"]

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Every request thread may hold a connection (the API's thread pool has 40; async routes add their own
# to_thread calls). SQLite connections are cheap, so the pool must not be the queue: SQLAlchemy's default
# (5 + 10 overflow) made polls wait out its 30 s timeout under 100 concurrent clients.
SQLITE_POOL_SIZE = 20
SQLITE_MAX_OVERFLOW = 60


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite opens transactions lazily on its own; take control so that BEGIN IMMEDIATE
    # style locking works as SQLAlchemy expects.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; for SQLite the parent directory is created and the pragmas set."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_pre_ping=False,
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=SQLITE_MAX_OVERFLOW,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=40)


class Database:
    """One engine and its session factory. `session()` is a context manager that closes the session."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session, rolled back on an exception and closed at the end.

        A write the database refuses because its disk is full (SQLite's "database or disk is full")
        comes out as `InsufficientStorageError` (the API's 507): nothing of the transaction was kept."""
        session = self.sessionmaker()
        try:
            yield session
        except BaseException as exc:
            with suppress(Exception):  # a rollback on a full disk may fail too; the transaction is gone
                session.rollback()
            if isinstance(exc, SQLAlchemyError) and is_disk_full(exc):
                raise InsufficientStorageError(
                    "the database's disk is full: nothing of this change was kept; retry once space is "
                    "freed on the server",
                    code="insufficient_storage",
                ) from exc
            raise
        finally:
            session.close()

    @contextmanager
    def advisory_lock(self, key: int = BLOB_REFERENCES_LOCK) -> Iterator[None]:
        """Hold a PostgreSQL session-level advisory lock: one holder among every process and machine
        that uses this database; released when the block ends or the connection drops (its holder died).
        Only for PostgreSQL (SQLite is one machine's: a file lock does)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()

    def migrate(self) -> None:
        """Bring the schema up to date (Alembic `upgrade head`)."""
        from preftune.store.migrate import upgrade

        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    """The database `settings` point at, migrated to the current schema unless `migrate=False`."""
    db = Database(settings.resolved_database_url)
    if migrate:
        db.migrate()
    return db
