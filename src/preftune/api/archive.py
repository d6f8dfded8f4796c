"""Tar archives of a job's output directories, built once and cached for Range downloads.

The tar is written to a temporary name next to its final one and renamed, so concurrent
downloads of the same artifact never see half an archive; later downloads reuse it
(Starlette's FileResponse then serves HTTP Range requests from the file).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path


def cached_tar(source: Path, cache_dir: Path, name: str) -> Path:
    """A tar of `source`'s files (paths relative to `source`) at `cache_dir/name.tar`.

    Rebuilt when any file in `source` is newer than the cached tar.
    """
    target = cache_dir / f"{name}.tar"
    newest = max((p.stat().st_mtime for p in source.rglob("*") if p.is_file()), default=0.0)
    if target.is_file() and target.stat().st_mtime >= newest:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=".tar.tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w") as archive:
                for path in sorted(source.rglob("*")):
                    if path.is_file():
                        archive.add(path, arcname=str(path.relative_to(source)), recursive=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
