"""Upload grants and pending datasets live in the database (SQLite and PostgreSQL): a grant is spent
by exactly one of many concurrent claims, each on its own connection; a grant the database never
issued is refused; pending datasets are per owner and one name is announced once."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from preftune.config import Settings
from preftune.errors import AuthenticationError, ConflictError
from preftune.service import datasets, keys, uploads
from preftune.store.db import Database


def test_a_grant_is_spent_once_under_concurrent_claims(db: Database, settings: Settings, alice: Any) -> None:
    with db.session() as session:
        grant, token = uploads.issue_grant(session, settings, alice.owner_id, filename="pairs.jsonl")
    assert uploads.verify_grant(settings, token).file_id == grant.file_id

    barrier = threading.Barrier(8)
    won: list[int] = []
    refused: list[str] = []

    def claim(index: int) -> None:
        barrier.wait()
        try:
            with db.session() as session:
                uploads.claim_grant(session, grant)
            won.append(index)
        except ConflictError as exc:
            refused.append(exc.code or "")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and refused == ["upload_url_used"] * 7


def test_a_grant_this_database_never_issued_is_refused(db: Database, settings: Settings, alice: Any) -> None:
    # Signed with this deployment's key (issued against another database): nothing shows it unused.
    other = Database(f"sqlite:///{settings.home / 'other.db'}")
    other.migrate()
    with other.session() as session:
        owner = keys.create_owner(session, "carol").id
        grant, _ = uploads.issue_grant(session, settings, owner, filename="a.jsonl")
    other.dispose()
    with db.session() as session, pytest.raises(AuthenticationError, match="no record"):
        uploads.claim_grant(session, grant)


def test_pending_datasets_are_per_owner_and_announced_once(db: Database, alice: Any, bob: Any) -> None:
    with db.session() as session:
        datasets.announce(session, alice.owner_id, "pairs", display_name="Pairs", example_count=6)
        with pytest.raises(ConflictError):
            datasets.announce(session, alice.owner_id, "pairs")
        datasets.announce(session, bob.owner_id, "pairs")  # another owner's namespace
        assert datasets.is_pending(session, alice.owner_id, "pairs")
        datasets.mark_ready(session, alice.owner_id, "pairs")
    with db.session() as session:  # another connection sees the change
        record = datasets.pending(session, alice.owner_id, "pairs")
        assert record is not None and record.ready and record.display_name == "Pairs"
        assert record.example_count == 6
        assert datasets.is_pending(session, bob.owner_id, "pairs")
        assert [r.name for r in datasets.list_pending(session, alice.owner_id)] == ["pairs"]
        assert datasets.forget(session, alice.owner_id, "pairs") and not datasets.forget(
            session, alice.owner_id, "pairs"
        )
        assert datasets.pending(session, alice.owner_id, "pairs") is None
        assert datasets.pending(session, bob.owner_id, "pairs") is not None
