"""Run the Alembic migrations shipped inside the package, programmatically (no alembic.ini needed).

Several processes may start at once (`preftune serve` and `preftune worker`): migrations are
serialised with a lock (a file lock next to a SQLite database, an advisory lock on PostgreSQL),
so the second process finds the schema current and does nothing.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any fixed number: the key of PostgreSQL's advisory lock for migrations.
PG_MIGRATION_LOCK = 7_270_736_901


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    config.attributes["engine"] = engine
    return config


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind `engine` to `revision`. Safe to call on every start, from many processes."""
    config = alembic_config(engine)
    if engine.dialect.name == "sqlite":
        with _sqlite_file_lock(engine):
            command.upgrade(config, revision)
    else:
        # env.py takes PG_MIGRATION_LOCK inside the migration transaction.
        command.upgrade(config, revision)
