"""Owners and API keys: create, list, revoke, authenticate, and the local admin key.

A key is `pt-` and 43 URL-safe random characters (256 bits); only its sha256 is stored, so
a leaked database does not leak keys. The local admin key is written to the credentials file
(mode 0600, the key alone on the first line) for the CLI and SDK on the same machine.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from preftune.config import Settings
from preftune.errors import AuthenticationError, ConflictError, NotFoundError, PermissionDeniedError
from preftune.service.common import new_id, now
from preftune.store.models import ApiKey, Owner

KEY_PREFIX = "pt-"
# Writing last_used_at on every request would turn every read into a write; a minute is precise enough.
LAST_USED_RESOLUTION_SECONDS = 60.0
LOCAL_OWNER_NAME = "local"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the owner whose resources they see, and their key."""

    owner_id: str
    key_id: str
    is_admin: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_owner(session: Session, name: str) -> Owner:
    owner = Owner(id=new_id("owner"), name=name, created_at=now())
    session.add(owner)
    session.commit()
    return owner


def create_key(
    session: Session,
    owner_id: str,
    name: str = "default",
    *,
    is_admin: bool = False,
) -> tuple[ApiKey, str]:
    """A new key for `owner_id`; returns the record and the secret (shown once, never stored)."""
    if session.get(Owner, owner_id) is None:
        raise NotFoundError(f"owner {owner_id} not found", param="owner_id")
    secret = generate_key()
    record = ApiKey(
        id=new_id("key"),
        owner_id=owner_id,
        name=name,
        key_hash=hash_key(secret),
        prefix=secret[:10],
        is_admin=is_admin,
        created_at=now(),
    )
    session.add(record)
    session.commit()
    return record, secret


def create_key_for_caller(
    session: Session, caller: Caller, name: str = "default", *, new_owner: bool = False
) -> tuple[ApiKey, str]:
    """`POST /keys`: a key for the caller's owner, or (admins only) for a brand-new owner."""
    if not new_owner:
        return create_key(session, caller.owner_id, name)
    if not caller.is_admin:
        raise PermissionDeniedError(
            "only an admin key can create a key for a new owner; drop new_owner or use the admin key "
            "(PREFTUNE_HOME/credentials on the server)",
            param="new_owner",
        )
    owner = create_owner(session, name)
    return create_key(session, owner.id, name)


def list_keys(session: Session, owner_id: str, *, include_revoked: bool = True) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.owner_id == owner_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query.order_by(ApiKey.created_at.desc(), ApiKey.id)))


def get_key(session: Session, owner_id: str, key_id: str) -> ApiKey:
    record = session.get(ApiKey, key_id)
    if record is None or record.owner_id != owner_id:
        raise NotFoundError(f"API key {key_id} not found", param="key_id", code="key_not_found")
    return record


def revoke_key(session: Session, owner_id: str, key_id: str) -> ApiKey:
    """Revoke a key of `owner_id`; it stops working at once. Revoking twice is harmless."""
    record = get_key(session, owner_id, key_id)
    if record.revoked_at is None:
        record.revoked_at = now()
        session.commit()
    return record


def authenticate(session: Session, key: str | None) -> Caller:
    """The caller behind `key`; `AuthenticationError` if it is missing, unknown or revoked."""
    if not key:
        raise AuthenticationError(
            "missing API key: send 'Authorization: Bearer pt-…' (set PREFTUNE_API_KEY, or find the local "
            "key in PREFTUNE_HOME/credentials on the server)",
            code="missing_api_key",
        )
    record = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if record is None or record.revoked_at is not None:
        shown = key[:10] + "…" if len(key) > 10 else key
        raise AuthenticationError(
            f"invalid API key {shown}: it is unknown or revoked; create one with `preftune keys create`",
            code="invalid_api_key",
        )
    stamp = now()
    if record.last_used_at is None or stamp - record.last_used_at > LAST_USED_RESOLUTION_SECONDS:
        record.last_used_at = stamp
        session.commit()
    return Caller(owner_id=record.owner_id, key_id=record.id, is_admin=record.is_admin)


def read_credentials(path: Path) -> str | None:
    """The key on the first line of a credentials file, or None."""
    try:
        first = path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError):
        return None
    return first or None


def write_credentials(path: Path, key: str) -> None:
    """Write `key` alone on the first line, mode 0600 from the start (never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_local_admin(session: Session, settings: Settings) -> str | None:
    """On first start, create the local owner and an admin key and write it to the credentials file.

    Returns the new key when one was written, None when the credentials file already holds a
    working key. If the file is missing or its key was revoked, a new admin key is issued for the
    existing admin owner.
    """
    existing = read_credentials(settings.credentials_path)
    if existing is not None:
        record = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(existing)))
        if record is not None and record.revoked_at is None:
            return None
    admin = session.scalar(
        select(ApiKey).where(ApiKey.is_admin.is_(True)).order_by(ApiKey.created_at).limit(1)
    )
    owner_id = admin.owner_id if admin is not None else create_owner(session, LOCAL_OWNER_NAME).id
    record, secret = create_key(session, owner_id, "local-admin", is_admin=True)
    try:
        write_credentials(settings.credentials_path, secret)
    except OSError as exc:
        session.delete(record)
        session.commit()
        raise ConflictError(
            f"cannot write the local API key to {settings.credentials_path}: {exc}; check PREFTUNE_HOME",
            param="PREFTUNE_HOME",
        ) from None
    return secret
