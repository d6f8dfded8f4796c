"""Files: validation on upload, names, listing with cursors, reports, ownership and deletion."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from helpers.data import first_lines
from preftune.config import Settings
from preftune.errors import ConflictError, InvalidRequestError, NotFoundError
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.store.blobs import BlobStore
from preftune.store.db import Database


def test_valid_upload_is_processed_with_counts(
    db: Database, blobs: BlobStore, alice: Any, small_orca: Path
) -> None:
    with db.session() as session:
        record = file_service.create_file(
            session,
            alice.owner_id,
            blobs.stage_path(small_orca),
            blobs=blobs,
            filename="/tmp/x/orca.jsonl",
            name="orca-pairs",
        )
        assert record.status == "processed" and record.status_details is None
        assert record.format == "preference" and record.n_examples == 12
        assert record.filename == "orca.jsonl" and record.bytes == small_orca.stat().st_size
        report = file_service.get_report(session, alice.owner_id, record.id)
        assert report["ok"] is True and "path" not in report
        # A dataset name works wherever an id does.
        assert file_service.get_file(session, alice.owner_id, "orca-pairs").id == record.id


def test_invalid_upload_is_kept_with_an_error_naming_the_line(
    db: Database, blobs: BlobStore, alice: Any, small_orca: Path, tmp_path: Path
) -> None:
    lines = small_orca.read_text().splitlines()
    lines[3] = lines[3].replace('"preferred_output"', '"chosen"')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with db.session() as session:
        record = file_service.create_file(
            session, alice.owner_id, blobs.stage_path(bad), blobs=blobs, filename="bad.jsonl"
        )
        assert record.status == "error"
        assert record.status_details is not None and "line 4" in record.status_details
        summary = file_service.report_summary(record.report)
        assert summary is not None and summary["n_errors"] >= 1 and summary["errors"][0]["line"] == 4


def test_an_upload_named_like_another_format_is_refused_by_its_extension(
    db: Database, blobs: BlobStore, alice: Any, small_orca: Path
) -> None:
    with db.session() as session:
        record = file_service.create_file(
            session, alice.owner_id, blobs.stage_path(small_orca), blobs=blobs, filename="data.csv"
        )
        assert record.status == "error"
        assert record.status_details is not None and ".jsonl" in record.status_details


def test_names_follow_the_resource_rule_and_are_unique(
    db: Database, blobs: BlobStore, alice: Any, bob: Any, small_orca: Path
) -> None:
    def upload(owner_id: str, name: str) -> None:
        file_service.create_file(
            session, owner_id, blobs.stage_path(small_orca), blobs=blobs, filename="o.jsonl", name=name
        )

    with db.session() as session:
        for bad in ("Orca", "-orca", "orca-", "a" * 64, "orca_pairs"):
            with pytest.raises(InvalidRequestError) as info:
                upload(alice.owner_id, bad)
            assert info.value.param == "name"
        upload(alice.owner_id, "orca")
        with pytest.raises(ConflictError) as conflict:
            upload(alice.owner_id, "orca")
        assert conflict.value.param == "name"
        # Names are per owner.
        upload(bob.owner_id, "orca")
    # Every refused upload was disposed of: only the one shared blob is left.
    assert [p.name for p in blobs.root.rglob("*") if p.is_file()] == [
        hashlib.sha256(small_orca.read_bytes()).hexdigest()
    ]


def test_list_is_newest_first_with_cursor_pages(
    db: Database, blobs: BlobStore, alice: Any, bob: Any, small_orca: Path
) -> None:
    def upload(owner_id: str, filename: str) -> str:
        blob = blobs.stage_path(small_orca)
        return file_service.create_file(session, owner_id, blob, blobs=blobs, filename=filename).id

    with db.session() as session:
        ids = [upload(alice.owner_id, f"{i}.jsonl") for i in range(5)]
        upload(bob.owner_id, "bob.jsonl")
        seen: list[str] = []
        after = None
        while True:
            page = file_service.list_files(session, alice.owner_id, limit=2, after=after)
            seen += [f.id for f in page.data]
            if not page.has_more:
                break
            after = page.last_id
        assert seen == ids[::-1]
        with pytest.raises(InvalidRequestError):
            file_service.list_files(session, alice.owner_id, limit=0)


def test_another_owners_file_is_not_found(
    db: Database, blobs: BlobStore, alice: Any, bob: Any, orca_file_id: str
) -> None:
    with db.session() as session:
        for call in (
            lambda: file_service.get_file(session, bob.owner_id, orca_file_id),
            lambda: file_service.get_report(session, bob.owner_id, orca_file_id),
            lambda: file_service.content_path(session, bob.owner_id, orca_file_id, blobs),
            lambda: file_service.delete_file(session, bob.owner_id, orca_file_id, blobs),
        ):
            with pytest.raises(NotFoundError) as info:
                call()
            assert info.value.message == f"file {orca_file_id!r} not found"
        assert file_service.content_path(session, alice.owner_id, orca_file_id, blobs).is_file()


def test_delete_removes_the_blob_when_unused_and_refuses_while_a_job_needs_it(
    db: Database, blobs: BlobStore, settings: Settings, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    with db.session() as session:
        path = file_service.content_path(session, alice.owner_id, orca_file_id, blobs)
        job = job_service.create_job(
            session, alice.owner_id, model=str(tiny_model_dir), training_file=orca_file_id, settings=settings
        )
        with pytest.raises(ConflictError) as info:
            file_service.delete_file(session, alice.owner_id, orca_file_id, blobs)
        assert job.id in info.value.message
        job_service.cancel_job(session, alice.owner_id, job.id)
        file_service.delete_file(session, alice.owner_id, orca_file_id, blobs)
        assert not path.exists()
        with pytest.raises(NotFoundError):
            file_service.get_file(session, alice.owner_id, orca_file_id)


def _blob_files(blobs: BlobStore) -> list[str]:
    """Every file in the blob store (placed blobs and staged leftovers), as relative paths."""
    return sorted(str(p.relative_to(blobs.root)) for p in blobs.root.rglob("*") if p.is_file())


def _variant(path: Path, tmp_path: Path, n_lines: int) -> Path:
    """Other bytes than `path`: its first `n_lines` lines (still a valid data set)."""
    return first_lines(path, tmp_path / f"variant-{n_lines}.jsonl", n_lines)


@pytest.mark.parametrize("reason", ["reused_key", "taken_name", "bad_purpose", "bad_name"])
def test_a_rejected_upload_leaves_the_blob_store_as_it_was(
    db: Database, blobs: BlobStore, alice: Any, small_orca: Path, tmp_path: Path, reason: str
) -> None:
    with db.session() as session:
        first = file_service.create_file(
            session,
            alice.owner_id,
            blobs.stage_path(small_orca),
            blobs=blobs,
            filename="o.jsonl",
            name="orca",
            idempotency_key="k1",
        )
        before = _blob_files(blobs)
        assert before == [f"{first.sha256[:2]}/{first.sha256}"]
        other = blobs.stage_path(_variant(small_orca, tmp_path, 5))
        kwargs: dict[str, Any] = {
            "reused_key": {"idempotency_key": "k1"},
            "taken_name": {"name": "orca"},
            "bad_purpose": {"purpose": "chat"},
            "bad_name": {"name": "Not_A_Name"},
        }[reason]
        with pytest.raises((ConflictError, InvalidRequestError)):
            file_service.create_file(
                session, alice.owner_id, other, blobs=blobs, filename="o.jsonl", **kwargs
            )
        assert _blob_files(blobs) == before
        assert file_service.content_path(session, alice.owner_id, first.id, blobs).read_bytes() == (
            small_orca.read_bytes()
        )


def test_an_accepted_upload_keeps_its_blob_when_a_rejected_one_of_the_same_bytes_ends_first(
    db: Database, blobs: BlobStore, alice: Any, small_orca: Path, tmp_path: Path
) -> None:
    # Both uploads have their bytes stored before either is recorded; the rejected one finishes
    # first, while no file row uses those bytes yet. Its cleanup must not take the other's blob.
    with db.session() as session:
        file_service.create_file(
            session,
            alice.owner_id,
            blobs.stage_path(_variant(small_orca, tmp_path, 5)),
            blobs=blobs,
            filename="o.jsonl",
            name="taken",
        )
        accepted = blobs.stage_path(small_orca)
        rejected = blobs.stage_path(small_orca)
        assert rejected.sha256 == accepted.sha256
        with pytest.raises(ConflictError):
            file_service.create_file(
                session, alice.owner_id, rejected, blobs=blobs, filename="o.jsonl", name="taken"
            )
        record = file_service.create_file(session, alice.owner_id, accepted, blobs=blobs, filename="o.jsonl")
        assert record.status == "processed"
        path = file_service.content_path(session, alice.owner_id, record.id, blobs)
        assert path.read_bytes() == small_orca.read_bytes()
        # And the other order: a rejection after the accepted upload is recorded keeps it too.
        late = blobs.stage_path(small_orca)
        with pytest.raises(ConflictError):
            file_service.create_file(
                session, alice.owner_id, late, blobs=blobs, filename="o.jsonl", name="taken"
            )
        assert path.read_bytes() == small_orca.read_bytes()
        assert list((blobs.root / "tmp").iterdir()) == []


def test_deleting_the_last_file_of_some_bytes_does_not_take_an_upload_in_flight(
    db: Database, blobs: BlobStore, alice: Any, small_orca: Path
) -> None:
    with db.session() as session:
        old = file_service.create_file(
            session, alice.owner_id, blobs.stage_path(small_orca), blobs=blobs, filename="o.jsonl"
        )
        in_flight = blobs.stage_path(small_orca)
        file_service.delete_file(session, alice.owner_id, old.id, blobs)
        assert not blobs.exists(old.sha256)
        new = file_service.create_file(session, alice.owner_id, in_flight, blobs=blobs, filename="o.jsonl")
        assert file_service.content_path(session, alice.owner_id, new.id, blobs).read_bytes() == (
            small_orca.read_bytes()
        )


@pytest.mark.parametrize("same_bytes", [True, False])
def test_concurrent_uploads_with_one_key_keep_exactly_the_winners_blob(
    db: Database, blobs: BlobStore, alice: Any, small_orca: Path, tmp_path: Path, same_bytes: bool
) -> None:
    # Four uploads race with one Idempotency-Key and different requests (file names, and bytes when
    # not `same_bytes`): one wins, the others are refused at the lookup or at commit.
    n = 4
    sources = [small_orca if same_bytes else _variant(small_orca, tmp_path, 3 + i) for i in range(n)]
    staged = [blobs.stage_path(path) for path in sources]
    barrier = threading.Barrier(n)

    def upload(i: int) -> str:
        barrier.wait()
        with db.session() as session:
            try:
                return file_service.create_file(
                    session,
                    alice.owner_id,
                    staged[i],
                    blobs=blobs,
                    filename=f"{i}.jsonl",
                    idempotency_key="k",
                ).id
            except ConflictError:
                return ""

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(upload, range(n)))
    winners = [r for r in results if r]
    assert len(winners) == 1
    with db.session() as session:
        record = file_service.get_file(session, alice.owner_id, winners[0])
        path = file_service.content_path(session, alice.owner_id, record.id, blobs)
        assert path.read_bytes() == sources[results.index(winners[0])].read_bytes()
    assert _blob_files(blobs) == [f"{record.sha256[:2]}/{record.sha256}"]
