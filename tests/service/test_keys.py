"""API keys: hashed storage, authentication, revocation, owners, and the local admin key file."""

from __future__ import annotations

import stat
from typing import Any

import pytest
from sqlalchemy import select

from preftune.config import Settings
from preftune.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from preftune.service import keys as key_service
from preftune.store.db import Database
from preftune.store.models import ApiKey


def test_local_admin_key_is_written_once_mode_0600(db: Database, settings: Settings) -> None:
    with db.session() as session:
        key = key_service.ensure_local_admin(session, settings)
        assert key is not None and key.startswith("pt-")
        path = settings.credentials_path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().splitlines()[0] == key
        caller = key_service.authenticate(session, key)
        assert caller.is_admin
        # A second start keeps the same key.
        assert key_service.ensure_local_admin(session, settings) is None
        assert path.read_text().splitlines()[0] == key


def test_revoked_local_key_is_replaced_for_the_same_owner(db: Database, settings: Settings) -> None:
    with db.session() as session:
        first = key_service.ensure_local_admin(session, settings)
        assert first is not None
        caller = key_service.authenticate(session, first)
        key_service.revoke_key(session, caller.owner_id, caller.key_id)
        second = key_service.ensure_local_admin(session, settings)
        assert second is not None and second != first
        assert key_service.authenticate(session, second).owner_id == caller.owner_id


def test_keys_are_stored_hashed_only(db: Database, alice: Any) -> None:
    with db.session() as session:
        rows = session.scalars(select(ApiKey)).all()
        for row in rows:
            assert not row.key_hash.startswith("pt-")
            assert len(row.key_hash) == 64
    assert alice.key not in {row.key_hash for row in rows}


def test_authentication_errors_say_what_to_do(db: Database, alice: Any) -> None:
    with db.session() as session:
        with pytest.raises(AuthenticationError, match="missing API key"):
            key_service.authenticate(session, None)
        with pytest.raises(AuthenticationError, match="unknown or revoked"):
            key_service.authenticate(session, "pt-not-a-real-key")
        caller = key_service.authenticate(session, alice.key)
        key_service.revoke_key(session, caller.owner_id, caller.key_id)
        with pytest.raises(AuthenticationError):
            key_service.authenticate(session, alice.key)


def test_keys_of_another_owner_are_not_found(db: Database, alice: Any, bob: Any) -> None:
    with db.session() as session:
        alice_key = key_service.list_keys(session, alice.owner_id)[0]
        assert [k.owner_id for k in key_service.list_keys(session, bob.owner_id)] == [bob.owner_id]
        with pytest.raises(NotFoundError):
            key_service.revoke_key(session, bob.owner_id, alice_key.id)
        assert key_service.authenticate(session, alice.key)


def test_only_admins_create_new_owners(db: Database, settings: Settings, alice: Any) -> None:
    with db.session() as session:
        with pytest.raises(PermissionDeniedError) as info:
            key_service.create_key_for_caller(session, alice.caller, "x", new_owner=True)
        assert info.value.param == "new_owner"
        admin_key = key_service.ensure_local_admin(session, settings)
        admin = key_service.authenticate(session, admin_key)
        record, secret = key_service.create_key_for_caller(session, admin, "team-b", new_owner=True)
        assert record.owner_id != admin.owner_id
        assert key_service.authenticate(session, secret).owner_id == record.owner_id
        same, _ = key_service.create_key_for_caller(session, alice.caller, "laptop")
        assert same.owner_id == alice.owner_id
