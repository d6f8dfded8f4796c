"""FastAPI dependencies: the settings, a database session per request, the calling owner.

Declared once, as `Annotated` aliases, so every dialect's routes say `caller: CallerDep,
session: SessionDep` and hand both to `preftune.service`. Authentication is `Authorization:
Bearer KEY`; a missing, unknown or revoked key is a 401 in the error envelope.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from preftune.config import Settings
from preftune.errors import AuthenticationError
from preftune.service.keys import Caller, authenticate
from preftune.store.blobs import BlobStore
from preftune.store.db import Database

# auto_error=False: we answer a missing key ourselves, in the error envelope.
bearer = HTTPBearer(
    auto_error=False, description="An API key: `preftune keys create`, or PREFTUNE_HOME/credentials."
)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


def get_db(db: Database = Depends(get_database)) -> Iterator[Session]:
    """A session for the request, closed (and rolled back if uncommitted) at its end."""
    with db.session() as session:
        yield session


def get_owner(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    db: Database = Depends(get_database),
) -> Caller:
    """The caller (owner, key, admin flag) of the presented API key; 401 without a valid key.

    Uses its own short session, so a route's session is not held open across authentication.
    """
    if credentials is None or not credentials.credentials:
        raise AuthenticationError(
            "missing API key: send `Authorization: Bearer KEY` (the local key is in PREFTUNE_HOME/credentials)",
            code="missing_api_key",
        )
    with db.session() as session:
        return authenticate(session, credentials.credentials)


# The aliases routes declare (one place, not one `Depends(...)` per parameter per route).
CallerDep = Annotated[Caller, Depends(get_owner)]
SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Repeat a create safely: the same key (per owner) returns the first resource instead of a "
        "new one; the same key with a different request is a 409.",
    ),
]
