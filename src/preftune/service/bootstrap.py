"""Start-up of the embedded service: directories, database migrations, the local admin key."""

from __future__ import annotations

from preftune.config import Settings
from preftune.service.keys import ensure_local_admin
from preftune.store.blobs import BlobStore
from preftune.store.db import Database, open_database


def bootstrap(settings: Settings) -> tuple[Database, BlobStore, str | None]:
    """Create PREFTUNE_HOME's directories, migrate the database and make sure a local admin key exists.

    Returns the database, the blob store and the admin key if one was just created (else None).
    Safe to run on every start and from several processes.
    """
    for path in (settings.home, settings.blobs_dir, settings.models_dir, settings.jobs_dir):
        path.mkdir(parents=True, exist_ok=True)
    db = open_database(settings)
    with db.session() as session:
        new_key = ensure_local_admin(session, settings)
    return db, BlobStore(settings.blobs_dir), new_key
