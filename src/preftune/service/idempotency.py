"""Idempotent creates: one `Idempotency-Key` per owner names one resource (a job or a file).

A create that carries a key stores it with a fingerprint of the request (`request_hash`). A
repeat with the same key and the same fingerprint is the same request arriving again (a client
retrying after a lost response): it gets the resource made the first time. The same key with a
different fingerprint is a mistake worth telling the caller about, so it is a `ConflictError`
rather than a silent second resource. A unique (owner, key) index settles races.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from preftune.errors import ConflictError, InvalidRequestError
from preftune.store.models import File, Job

MAX_KEY_LENGTH = 255
HEADER = "Idempotency-Key"

# Every table that takes idempotent creates has owner_id, idempotency_key and request_hash.
Keyed = TypeVar("Keyed", Job, File)


def check_key(key: str | None) -> None:
    """Refuse a key the column cannot hold (the API checks the header too; the SDK may not)."""
    if key is not None and len(key) > MAX_KEY_LENGTH:
        raise InvalidRequestError(f"{HEADER} must be at most {MAX_KEY_LENGTH} characters", param=HEADER)


def fingerprint(request: dict[str, Any]) -> str:
    """sha256 of a JSON-able request, independent of key order."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def find_replay(
    session: Session, table: type[Keyed], owner_id: str, key: str, request_hash: str, *, what: str
) -> Keyed | None:
    """The owner's resource created with `key`, if any; `ConflictError` if it came from another request.

    `what` names the resource in the message ("job", "file").
    """
    row = session.scalar(select(table).where(table.owner_id == owner_id, table.idempotency_key == key))
    if row is not None and row.request_hash != request_hash:
        raise ConflictError(
            f"{HEADER} {key!r} was already used for a different request ({what} {row.id}); "
            f"use a new key for a new {what}",
            param=HEADER,
            code="idempotency_key_reused",
        )
    return row


def commit_or_replay(
    session: Session, record: Keyed, owner_id: str, key: str | None, request_hash: str, *, what: str
) -> Keyed:
    """Commit the new `record`; if a concurrent request with the same key won the race, return its row.

    Two requests with one key (a client retrying a slow create) both pass the lookup before either
    commits; the unique (owner, key) constraint lets one in, and the other answers with the winner.
    """
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if key is not None:
            existing = find_replay(session, type(record), owner_id, key, request_hash, what=what)
            if existing is not None:
                return existing
        raise
    return record
