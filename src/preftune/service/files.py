"""Data files: record an uploaded blob, validate it with the data layer, list, get, delete.

The upload itself (streaming the body into the blob store) happens before: the API stages the
body in `BlobStore` (hashed, under a temporary name), then calls `create_file` with the resulting
`StagedBlob`, which places the bytes under their sha256 only if the upload is accepted.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from preftune.errors import ConflictError, InvalidRequestError, NotFoundError
from preftune.service import idempotency
from preftune.service.common import Page, check_limit, check_resource_name, new_id, now
from preftune.service.states import TERMINAL
from preftune.store.blobs import BlobStore, StagedBlob
from preftune.store.models import File, Job

PURPOSES = ("fine-tune",)
# How many errors and warnings the file object carries; the full report has all that were collected.
SUMMARY_ITEMS = 5


def validate_blob(path: Path, filename: str | None = None) -> dict[str, Any]:
    """Run the data layer's streaming validator and return its JSON report.

    `filename` is the name the user uploaded (the blob itself is named by its sha256), so the
    extension rule (.jsonl / .jsonl.gz) applies to uploads as it does to `files check`.
    """
    from preftune.data import validate_file

    report = dict(validate_file(path, name=filename).to_dict())
    # The blob's path on the server means nothing to the user and is not theirs to know.
    report.pop("path", None)
    return report


def _status_details(report: dict[str, Any]) -> str | None:
    errors = report.get("errors") or []
    if report.get("ok", False):
        return None
    if errors:
        first = errors[0]
        where = f"line {first.get('line')}" if first.get("line") else "the file"
        field = f", {first['field']}" if first.get("field") else ""
        more = f" (and {len(errors) - 1} more; see the report)" if len(errors) > 1 else ""
        return f"{where}{field}: {first.get('message')}{more}"
    return str(report.get("message") or "the file cannot be used for fine-tuning; see the report")


def report_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report without its long lists: counts plus the first errors and warnings."""
    if report is None:
        return None
    summary = {k: v for k, v in report.items() if not isinstance(v, list)}
    for key in ("errors", "warnings"):
        items = report.get(key) or []
        summary[key] = items[:SUMMARY_ITEMS]
        summary[f"n_{key}"] = len(items)
    return summary


def create_file(
    session: Session,
    owner_id: str,
    blob: StagedBlob,
    *,
    blobs: BlobStore,
    filename: str,
    purpose: str = "fine-tune",
    name: str | None = None,
    idempotency_key: str | None = None,
) -> File:
    """Record an uploaded blob for `owner_id` and validate it; status becomes `processed` or `error`.

    A data problem is not an exception: the file is kept with status `error` and its report, so the
    user can read why. `name` (optional) must follow the resource-name rule and be unique per owner.
    With an `idempotency_key`, a repeated upload of the same owner (same content, filename, purpose
    and name) returns the file created first, as job creation does; the same key with another upload
    is a `ConflictError`. Deleting the file frees its key.

    An upload comes as a `StagedBlob` with `blobs`, the store that staged it. This function always
    disposes of it, placing it only if the upload is accepted and only under the store's
    `references()` lock together with the commit of the row that uses it, so a rejected upload
    leaves the blob store as it was and a concurrent delete of another file with the same bytes
    can never remove them in between.
    """
    try:
        return _create(session, owner_id, blob, blobs, filename, purpose, name, idempotency_key)
    finally:
        blobs.discard(blob)  # nothing left to remove once the blob was placed


def _create(
    session: Session,
    owner_id: str,
    blob: StagedBlob,
    blobs: BlobStore,
    filename: str,
    purpose: str,
    name: str | None,
    idempotency_key: str | None,
) -> File:
    filename = safe_filename(filename)
    idempotency.check_key(idempotency_key)
    fingerprint = upload_fingerprint(blob, filename=filename, purpose=purpose, name=name)
    if idempotency_key is not None:
        existing = idempotency.find_replay(session, File, owner_id, idempotency_key, fingerprint, what="file")
        if existing is not None:
            return existing
    if purpose not in PURPOSES:
        raise InvalidRequestError(
            f"purpose must be one of {', '.join(PURPOSES)} (got {purpose!r})", param="purpose"
        )
    if name is not None:
        check_resource_name(name)
        _check_name_free(session, owner_id, name)
    report = validate_blob(blob.path, filename)
    ok = bool(report.get("ok"))
    record = File(
        id=new_id("file"),
        owner_id=owner_id,
        filename=filename,
        name=name,
        purpose=purpose,
        bytes=blob.size,
        sha256=blob.sha256,
        status="processed" if ok else "error",
        status_details=_status_details(report),
        format=report.get("format"),
        n_examples=report.get("n_examples"),
        report=report,
        created_at=now(),
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
    )
    session.add(record)
    blobs.prepare(blob)  # a remote store uploads here, before the lock every machine shares
    with blobs.references():
        # Placed before the row commits: a crash in between leaves an unused blob, never a file
        # without its bytes. Under the lock, no delete can run between the two.
        blobs.place(blob)
        try:
            return idempotency.commit_or_replay(
                session, record, owner_id, idempotency_key, fingerprint, what="file"
            )
        except BaseException:
            # Refused at commit (a concurrent upload won the same key or name). The bytes may be
            # another file's too: only remove them if no live file uses them. Keeping a blob we could
            # not prove unused (the database failing too) is the safe mistake.
            with contextlib.suppress(Exception):
                session.rollback()
                if _blob_user(session, blob.sha256) is None:
                    blobs.delete(blob.sha256)
            raise


def safe_filename(filename: str | None) -> str:
    """The last component of a client's file name, without separators (either OS's) or control characters.

    The name is only shown back (listings, Content-Disposition); blobs are stored by sha256. Still, a
    name such as `..\\..\\x` or one with a NUL would mislead whoever saves the download under it.
    """
    last = re.split(r"[/\\]", filename or "")[-1]
    cleaned = "".join(ch for ch in last if ch.isprintable()).strip()
    if cleaned in ("", ".", ".."):
        return "upload.jsonl"
    return cleaned[:255]


def _blob_user(session: Session, sha256: str) -> str | None:
    """A live file whose content is the blob `sha256` (blobs are shared by identical uploads)."""
    return session.scalar(select(File.id).where(File.sha256 == sha256, File.deleted_at.is_(None)).limit(1))


def upload_fingerprint(blob: StagedBlob, *, filename: str, purpose: str, name: str | None) -> str:
    """What makes two uploads the same upload: the bytes (by sha256) and the form fields sent with them."""
    return idempotency.fingerprint(
        {"sha256": blob.sha256, "bytes": blob.size, "filename": filename, "purpose": purpose, "name": name}
    )


def _check_name_free(session: Session, owner_id: str, name: str) -> None:
    taken = session.scalar(
        select(File.id).where(File.owner_id == owner_id, File.name == name, File.deleted_at.is_(None))
    )
    if taken is not None:
        raise ConflictError(
            f"you already have a file named {name!r} ({taken}); choose another name or delete that file",
            param="name",
            code="name_taken",
        )


def get_file(session: Session, owner_id: str, file_id: str, *, param: str = "file_id") -> File:
    """A live file of `owner_id` by id (or by its dataset name); `NotFoundError` otherwise."""
    record = session.get(File, file_id)
    if record is None and file_id:
        record = session.scalar(
            select(File).where(File.owner_id == owner_id, File.name == file_id, File.deleted_at.is_(None))
        )
    if record is None or record.owner_id != owner_id or record.deleted_at is not None:
        raise NotFoundError(f"file {file_id!r} not found", param=param, code="file_not_found")
    return record


def list_files(session: Session, owner_id: str, *, limit: int = 20, after: str | None = None) -> Page[File]:
    """Live files of `owner_id`, newest first; `after` is the last id of the previous page."""
    check_limit(limit)
    query = select(File).where(File.owner_id == owner_id, File.deleted_at.is_(None))
    if after is not None:
        cursor = get_file(session, owner_id, after, param="after")
        query = query.where(
            (File.created_at < cursor.created_at)
            | ((File.created_at == cursor.created_at) & (File.id < cursor.id))
        )
    rows = list(session.scalars(query.order_by(File.created_at.desc(), File.id.desc()).limit(limit + 1)))
    return Page(data=rows[:limit], has_more=len(rows) > limit)


def get_report(session: Session, owner_id: str, file_id: str) -> dict[str, Any]:
    """The full validation report of a file."""
    record = get_file(session, owner_id, file_id)
    return dict(record.report or {})


def report_with_token_stats(
    session: Session,
    owner_id: str,
    file_id: str,
    blobs: BlobStore,
    *,
    model: str,
    max_length: int,
    models_dir: Path,
) -> dict[str, Any]:
    """The full report plus token statistics with `model`'s tokenizer (computed once, then cached).

    Only for a file that passed validation: the statistics describe what would be trained on.
    """
    record = get_file(session, owner_id, file_id)
    report = dict(record.report or {})
    if not report.get("ok"):
        raise InvalidRequestError(
            "token statistics need a file that passed validation; fix its errors first", param="model"
        )
    path = content_path(session, owner_id, file_id, blobs)
    report["token_stats"] = _cached_token_stats(str(path), model, max_length, str(models_dir))
    return report


@functools.lru_cache(maxsize=64)
def _cached_token_stats(path: str, model: str, max_length: int, models_dir: str) -> dict[str, Any]:
    # Blobs are content-addressed and immutable, so (path, model, max_length) fixes the answer.
    from preftune.contracts.token_report import token_statistics

    return token_statistics(Path(path), model, max_length, Path(models_dir))


def content_path(session: Session, owner_id: str, file_id: str, blobs: BlobStore) -> Path:
    """The file's bytes as a file on this machine (a remote store fetches them into its cache)."""
    record = get_file(session, owner_id, file_id)
    try:
        return blobs.fetch(record.sha256)
    except NotFoundError:
        raise NotFoundError(
            f"the content of file {file_id} is missing from the blob store ({blobs.describe()})",
            code="file_content_missing",
        ) from None


def content_size(session: Session, owner_id: str, file_id: str, blobs: BlobStore) -> int:
    """The size of the file's bytes in the blob store (for streaming a download from it)."""
    record = get_file(session, owner_id, file_id)
    try:
        return blobs.size(record.sha256)
    except NotFoundError:
        raise NotFoundError(
            f"the content of file {file_id} is missing from the blob store ({blobs.describe()})",
            code="file_content_missing",
        ) from None


def delete_file(session: Session, owner_id: str, file_id: str, blobs: BlobStore) -> File:
    """Delete a file; refused while an unfinished job uses it. The blob goes when nothing uses it."""
    record = get_file(session, owner_id, file_id)
    in_use = session.scalar(
        select(Job.id).where(
            (Job.training_file_id == record.id) | (Job.validation_file_id == record.id),
            Job.status.not_in([s.value for s in TERMINAL]),
        )
    )
    if in_use is not None:
        raise ConflictError(
            f"file {record.id} is used by job {in_use}, which has not finished; cancel the job or wait for it",
            param="file_id",
            code="file_in_use",
        )
    record.deleted_at = now()
    # A deleted file cannot be returned to a retry, so its key may name a new upload.
    record.idempotency_key = None
    session.commit()
    # Under the lock uploads hold from placing a blob to committing its file: a concurrent upload of
    # the same bytes is either seen here as a user, or places its own copy after this delete.
    with blobs.references():
        if _blob_user(session, record.sha256) is None:
            blobs.delete(record.sha256)
    return record


def file_blob_path(session: Session, file_id: str, blobs: BlobStore) -> Path:
    """The runner's view: the blob of a file by id, whoever owns it (the job's owner was checked at creation),
    as a file on this machine (a remote store fetches it into the local cache, checked by sha256)."""
    record = session.get(File, file_id)
    if record is None:
        raise NotFoundError(f"file {file_id} not found", code="file_not_found")
    return blobs.fetch(record.sha256)
