"""Named datasets that are announced before their bytes arrive (Fireworks' dataset flow).

A dataset here is a file with a name (`File.name`, the resource-name rule) once its bytes are in
and checked. Its row in `pending_datasets` (owner, name) keeps what the file does not (display name,
the example count the client declared, when it was announced) and whether it is ready: between
`announce` and `mark_ready` the dataset is pending, and a pending record that already has its file
is "uploaded, not yet validated". A named file without a record (uploaded through the native routes)
is a ready dataset too. The rows are in the database, so a dataset announced on one API server can be
uploaded and finished on another.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from preftune.errors import ConflictError, NotFoundError
from preftune.service.common import check_resource_name, now
from preftune.service.files import get_file
from preftune.store import models
from preftune.store.models import File


@dataclass
class PendingDataset:
    name: str
    display_name: str | None
    example_count: int | None
    created_at: float
    ready: bool = False


def _record(row: models.PendingDataset) -> PendingDataset:
    return PendingDataset(row.name, row.display_name, row.example_count, row.created_at, bool(row.ready))


def _exists(name: str) -> ConflictError:
    return ConflictError(f"dataset {name!r} already exists", param="dataset_id", code="dataset_exists")


def file_of(session: Session, owner_id: str, name: str) -> File | None:
    try:
        return get_file(session, owner_id, name, param="dataset")
    except NotFoundError:
        return None


def announce(
    session: Session,
    owner_id: str,
    name: str,
    *,
    display_name: str | None = None,
    example_count: int | None = None,
) -> PendingDataset:
    """Record a dataset awaiting its bytes; a 409 if the owner has a dataset (or file) of that name."""
    check_resource_name(name, param="dataset_id")
    if file_of(session, owner_id, name) is not None:
        raise _exists(name)
    row = models.PendingDataset(
        owner_id=owner_id,
        name=name,
        display_name=display_name,
        example_count=example_count,
        created_at=now(),
        ready=False,
    )
    session.add(row)
    try:
        session.commit()  # the primary key (owner, name) decides between concurrent announcements
    except IntegrityError:
        session.rollback()
        raise _exists(name) from None
    return _record(row)


def pending(session: Session, owner_id: str, name: str) -> PendingDataset | None:
    check_resource_name(name, param="dataset_id")
    row = session.get(models.PendingDataset, (owner_id, name), populate_existing=True)
    return _record(row) if row is not None else None


def list_pending(session: Session, owner_id: str) -> list[PendingDataset]:
    rows = session.scalars(
        select(models.PendingDataset)
        .where(models.PendingDataset.owner_id == owner_id)
        .order_by(models.PendingDataset.name)
    ).all()
    return [_record(row) for row in rows]


def is_pending(session: Session, owner_id: str, name: str) -> bool:
    record = pending(session, owner_id, name)
    return record is not None and not record.ready


def mark_ready(session: Session, owner_id: str, name: str) -> None:
    """The dataset's file is in and checked."""
    session.execute(
        update(models.PendingDataset)
        .where(models.PendingDataset.owner_id == owner_id, models.PendingDataset.name == name)
        .values(ready=True)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def forget(session: Session, owner_id: str, name: str) -> bool:
    """Drop a pending record (a deleted dataset); whether there was one."""
    result = session.execute(
        delete(models.PendingDataset)
        .where(models.PendingDataset.owner_id == owner_id, models.PendingDataset.name == name)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]
