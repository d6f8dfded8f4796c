"""Presigned uploads: a grant to PUT one file's bytes, once, without the API key.

Hosted services answer an upload request with a presigned storage URL (Together's SDK expects
exactly that). Here the "storage URL" is a route of this server whose last path segment is a
grant: `base64url(payload).base64url(HMAC-SHA256(key, payload))`, the key derived from the
server's secret (`secrets.signing_key(settings, "upload")`). The payload names the owner, the
file id reserved for the upload, its file name and purpose, the most bytes it may carry and
when it expires. So a grant is:

- signed: any change to the payload (another file id, owner, size or expiry) breaks the HMAC;
- expiring: `UPLOAD_GRANT_SECONDS` after it was issued;
- single-file and size-limited: the bytes become that one file id, and at most `max_bytes`;
- single-use: issuing it records a row (`upload_grants`); the first PUT claims it by a conditional
  UPDATE of that row (`claimed_at IS NULL`), so exactly one PUT wins even when several race on several
  API servers sharing the database, and any later PUT is refused;
- useless for anything else: only the upload route reads grants; it is not an API key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from preftune.config import Settings
from preftune.errors import AuthenticationError, ConflictError, InvalidRequestError
from preftune.service.common import new_id, now
from preftune.service.files import PURPOSES, safe_filename
from preftune.service.secrets import signing_key
from preftune.store import models

UPLOAD_GRANT_SECONDS = 15 * 60


@dataclass(frozen=True)
class UploadGrant:
    owner_id: str
    file_id: str
    filename: str
    purpose: str
    max_bytes: int
    expires_at: float
    name: str | None = None  # the dataset name the file gets (Fireworks' datasets)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(settings: Settings, payload: str) -> str:
    return _b64(hmac.new(signing_key(settings, "upload"), payload.encode(), hashlib.sha256).digest())


def issue_grant(
    session: Session,
    settings: Settings,
    owner_id: str,
    *,
    filename: str,
    purpose: str = "fine-tune",
    max_bytes: int | None = None,
    ttl_seconds: float = UPLOAD_GRANT_SECONDS,
    name: str | None = None,
) -> tuple[UploadGrant, str]:
    """Reserve a file id for `owner_id`, record and sign a grant to upload its bytes; (grant, token)."""
    if purpose not in PURPOSES:
        raise InvalidRequestError(
            f"purpose must be one of {', '.join(PURPOSES)} (got {purpose!r})", param="purpose"
        )
    limit = settings.max_upload_bytes if max_bytes is None else min(max_bytes, settings.max_upload_bytes)
    grant = UploadGrant(
        owner_id=owner_id,
        file_id=new_id("file"),
        filename=safe_filename(filename),
        purpose=purpose,
        max_bytes=limit,
        expires_at=now() + ttl_seconds,
        name=name,
    )
    body = {
        "o": grant.owner_id,
        "f": grant.file_id,
        "n": grant.filename,
        "p": grant.purpose,
        "m": grant.max_bytes,
        "e": int(grant.expires_at),
        "d": grant.name,
    }
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    stamp = now()
    # Expired grants are refused before their row is looked at: their rows only take room.
    session.execute(delete(models.UploadGrant).where(models.UploadGrant.expires_at < stamp))
    session.add(
        models.UploadGrant(
            file_id=grant.file_id, owner_id=owner_id, created_at=stamp, expires_at=int(grant.expires_at)
        )
    )
    session.commit()
    return grant, f"{payload}.{_signature(settings, payload)}"


def _refused(why: str) -> AuthenticationError:
    return AuthenticationError(
        f"this upload URL is not valid: {why}; ask for a new one (POST /v1/files)", code="invalid_upload_url"
    )


def verify_grant(settings: Settings, token: str) -> UploadGrant:
    """The grant a token carries, if its signature holds and it has not expired (401 otherwise)."""
    payload, _, signature = token.partition(".")
    if not payload or not signature or not hmac.compare_digest(signature, _signature(settings, payload)):
        raise _refused("the signature does not match")
    try:
        body = json.loads(_unb64(payload))
        grant = UploadGrant(
            owner_id=str(body["o"]),
            file_id=str(body["f"]),
            filename=str(body["n"]),
            purpose=str(body["p"]),
            max_bytes=int(body["m"]),
            expires_at=float(body["e"]),
            name=str(body["d"]) if body.get("d") is not None else None,
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise _refused("it cannot be read") from exc
    if now() > grant.expires_at:
        raise _refused("it has expired")
    return grant


def claim_grant(session: Session, grant: UploadGrant) -> None:
    """Spend the grant: the first caller wins, every later one gets a 409 (even after a failed upload).

    One conditional UPDATE decides, in the database every API server shares: of concurrent PUTs, on
    one server or several, exactly one sees its row change."""
    result = session.execute(
        update(models.UploadGrant)
        .where(
            models.UploadGrant.file_id == grant.file_id,
            models.UploadGrant.owner_id == grant.owner_id,
            models.UploadGrant.claimed_at.is_(None),
        )
        .values(claimed_at=now())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return
    if session.get(models.UploadGrant, grant.file_id) is None:
        # Signed with this deployment's key but unknown to its database: issued against another
        # database, or its row was removed. Nothing proves it unused, so it is refused.
        raise _refused("this server has no record of it")
    raise ConflictError(
        f"this upload URL was already used for {grant.file_id}; ask for a new one (POST /v1/files)",
        code="upload_url_used",
    )
