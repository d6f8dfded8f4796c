"""Persistence: SQLAlchemy tables, Alembic migrations and the content-addressed blob store.

Only `preftune.service` writes through this package; other rooms go through the service.
"""

from preftune.store.blobs import BlobInfo, BlobStore, StagedBlob
from preftune.store.db import Database, open_database

__all__ = ["BlobInfo", "BlobStore", "Database", "StagedBlob", "open_database"]
