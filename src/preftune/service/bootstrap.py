"""Start-up of the service: directories, database migrations, the blob store, the local admin key."""

from __future__ import annotations

from preftune.config import Settings
from preftune.service.keys import ensure_local_admin
from preftune.store.blobs import BlobStore, open_blob_store
from preftune.store.db import Database, open_database


def open_blobs(settings: Settings, db: Database) -> BlobStore:
    """The blob store of `settings`, checked (a wrong endpoint or credentials raise
    `StorageUnavailableError` naming them). With PostgreSQL, the store's reference lock is a database
    advisory lock, so every server and runner on every machine shares it."""
    blobs = open_blob_store(settings, lock=None if db.is_sqlite else db.advisory_lock)
    blobs.check()
    return blobs


def bootstrap(settings: Settings) -> tuple[Database, BlobStore, str | None]:
    """Create PREFTUNE_HOME's directories, migrate the database, check the blob store and make sure a
    local admin key exists.

    Returns the database, the blob store and the admin key if one was just created (else None).
    Safe to run on every start and from several processes.
    """
    for path in (settings.home, settings.blobs_dir, settings.models_dir, settings.jobs_dir):
        path.mkdir(parents=True, exist_ok=True)
    db = open_database(settings)
    try:
        blobs = open_blobs(settings, db)
    except BaseException:
        db.dispose()
        raise
    with db.session() as session:
        new_key = ensure_local_admin(session, settings)
    return db, blobs, new_key


def bootstrap_runner(settings: Settings) -> tuple[Database, BlobStore]:
    """Start-up of a runner machine (`preftune runner`): its directories, the database (migrated) and
    the checked blob store. No admin key: a runner serves no API and must not mint keys in a shared
    database."""
    for path in (settings.home, settings.models_dir, settings.jobs_dir):
        path.mkdir(parents=True, exist_ok=True)
    db = open_database(settings)
    try:
        return db, open_blobs(settings, db)
    except BaseException:
        db.dispose()
        raise
