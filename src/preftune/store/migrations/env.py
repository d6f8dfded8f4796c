"""Alembic environment: migrates the engine handed over by `preftune.store.migrate.upgrade`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from preftune.store.migrate import PG_MIGRATION_LOCK
from preftune.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # One migrating process at a time; released when this transaction ends.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        # render_as_batch lets ALTER TABLE work on SQLite in later migrations.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
