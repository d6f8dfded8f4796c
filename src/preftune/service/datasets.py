"""Named datasets that are announced before their bytes arrive (Fireworks' dataset flow).

A dataset here is a file with a name (`File.name`, the resource-name rule) once its bytes are in
and checked. Its record under `PREFTUNE_HOME/datasets/<owner>/<name>.json` keeps what the file does
not (display name, the example count the client declared, when it was announced) and whether it
is ready: between `announce` and `mark_ready` the dataset is pending, and a pending record that
already has its file is "uploaded, not yet validated". A named file without a record (uploaded
through the native routes) is a ready dataset too. Servers sharing a database must share `PREFTUNE_HOME/datasets/` for a dataset
announced on one to be finished on another.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from preftune.config import Settings
from preftune.errors import ConflictError, NotFoundError
from preftune.service.common import check_resource_name, now
from preftune.service.files import get_file
from preftune.store.models import File


@dataclass
class PendingDataset:
    name: str
    display_name: str | None
    example_count: int | None
    created_at: float
    ready: bool = False


def _path(settings: Settings, owner_id: str, name: str) -> Path:
    check_resource_name(name, param="dataset_id")
    return settings.home / "datasets" / owner_id / f"{name}.json"


def file_of(session: Session, owner_id: str, name: str) -> File | None:
    try:
        return get_file(session, owner_id, name, param="dataset")
    except NotFoundError:
        return None


def announce(
    session: Session,
    settings: Settings,
    owner_id: str,
    name: str,
    *,
    display_name: str | None = None,
    example_count: int | None = None,
) -> PendingDataset:
    """Record a dataset awaiting its bytes; a 409 if the owner has a dataset (or file) of that name."""
    path = _path(settings, owner_id, name)
    if file_of(session, owner_id, name) is not None:
        raise ConflictError(f"dataset {name!r} already exists", param="dataset_id", code="dataset_exists")
    record = PendingDataset(name, display_name, example_count, now())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConflictError(
            f"dataset {name!r} already exists", param="dataset_id", code="dataset_exists"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(record), handle)
    return record


def pending(settings: Settings, owner_id: str, name: str) -> PendingDataset | None:
    try:
        data = json.loads(_path(settings, owner_id, name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return PendingDataset(**data)


def list_pending(settings: Settings, owner_id: str) -> list[PendingDataset]:
    folder = settings.home / "datasets" / owner_id
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = pending(settings, owner_id, path.stem)
        if record is not None:
            found.append(record)
    return found


def is_pending(settings: Settings, owner_id: str, name: str) -> bool:
    record = pending(settings, owner_id, name)
    return record is not None and not record.ready


def mark_ready(settings: Settings, owner_id: str, name: str) -> None:
    """The dataset's file is in and checked."""
    record = pending(settings, owner_id, name)
    if record is not None:
        record.ready = True
        path = _path(settings, owner_id, name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)), encoding="utf-8")
        tmp.replace(path)


def forget(settings: Settings, owner_id: str, name: str) -> bool:
    """Drop a pending record (a deleted dataset); whether there was one."""
    path = _path(settings, owner_id, name)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed
