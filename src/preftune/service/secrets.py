"""Secrets at rest: user-supplied secrets (W&B API keys) are stored encrypted, never in clear.

Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`. The key is `PREFTUNE_SECRET_KEY`
or, for the embedded single-machine set-up, `PREFTUNE_HOME/secret.key` (mode 0600),
created on first use. Servers and workers sharing one database must share the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from preftune.config import Settings
from preftune.errors import PreftuneError

PREFIX = "fernet:"


def _load_or_create_key(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # O_EXCL: if another process created it first, use theirs.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def _server_key(settings: Settings) -> bytes:
    return (
        settings.secret_key.encode() if settings.secret_key else _load_or_create_key(settings.secret_key_path)
    )


def _fernet(settings: Settings) -> Fernet:
    return Fernet(_server_key(settings))


def signing_key(settings: Settings, purpose: str) -> bytes:
    """A key for HMAC signatures of one `purpose` (e.g. presigned upload URLs), derived from the
    server's secret key: never the encryption key itself, and different for each purpose."""
    return hmac.new(_server_key(settings), b"preftune-signing:" + purpose.encode(), hashlib.sha256).digest()


def encrypt_secret(settings: Settings, value: str | None) -> str | None:
    """The stored form of a secret: `fernet:<token>`, or None when there is no secret."""
    if value is None:
        return None
    return PREFIX + _fernet(settings).encrypt(value.encode()).decode()


def decrypt_secret(settings: Settings, stored: str | None) -> str | None:
    """The clear secret for the trainer; raises if the key does not match the one that encrypted it."""
    if stored is None:
        return None
    if not stored.startswith(PREFIX):
        raise PreftuneError("a stored secret is not encrypted; it was written by an unknown version")
    try:
        return _fernet(settings).decrypt(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise PreftuneError(
            "cannot decrypt a stored secret: this server's PREFTUNE_SECRET_KEY (or HOME/secret.key) differs "
            "from the one that stored it; give every server and worker the same key",
            code="secret_key_mismatch",
        ) from None
