"""The local blob store: uploaded files kept by sha256 under `blobs/ab/abcdef…`.

A write streams to a temporary name in the same directory, is fsynced and then renamed, so a
crash never leaves half a file under a real name, and memory stays flat whatever the size.

An upload is *staged* first (written and hashed under `tmp/`, invisible under its sha256 name)
and *placed* only once the upload is accepted, so a rejected upload has nothing to take back.
A full disk while staging (ENOSPC, EDQUOT) removes the staged part and raises
`InsufficientStorageError` (the API's 507 `insufficient_storage`).
A process killed mid-upload leaves its staged file behind; `sweep_staged` (run when the API
starts) removes those once they are older than any upload in flight could be.
Blobs are shared by every file with the same bytes, so placing a blob and recording a reference
to it, and checking for references and deleting, happen under one lock (`references()`): a
delete can never slip between an upload placing its bytes and recording that it uses them.

`BlobStore` is the protocol every backend keeps, and the local directory backend itself (the
default). `preftune.store.s3.S3BlobStore` keeps the same protocol on S3-compatible object storage:
it stages on the local disk the same way, and its local directory becomes a bounded cache.
Besides content-addressed blobs, a store keeps job artifacts (checkpoints, adapters, models, logs)
under `jobs/<job id>/...` keys; for the local backend they already are on the one disk, so those
calls do nothing. `open_blob_store(settings)` picks the backend from `PREFTUNE_BLOB_URL`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from preftune.errors import InsufficientStorageError, NotFoundError, PayloadTooLargeError, is_disk_full

if TYPE_CHECKING:
    from preftune.config import Settings

# A lock shared by every process that uses the store (see `BlobStore.references`).
ReferenceLock = Callable[[], AbstractContextManager[None]]

CHUNK = 1024 * 1024
# A staged file untouched this long belongs to no upload in flight: uploads write it continuously
# and place or discard it within the validation that follows (seconds, minutes for the largest).
STALE_STAGED_SECONDS = 6 * 3600
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BlobInfo:
    """A blob in place under its sha256 name."""

    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class StagedBlob:
    """Bytes written, fsynced and hashed under a private temporary name, not yet under their sha256.

    `path` is the temporary file (readable, e.g. for validation); `BlobStore.place` moves it into
    place and `BlobStore.discard` removes it.
    """

    sha256: str
    size: int
    path: Path


class _Writer:
    """Hashes and writes chunks to a temporary file, refusing more than `max_bytes`."""

    def __init__(self, root: Path, max_bytes: int | None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        tmp_dir = root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".part")
        self.tmp_path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise PayloadTooLargeError(
                f"the file is larger than the server's limit of {self.max_bytes} bytes; split it or raise "
                "PREFTUNE_MAX_UPLOAD_BYTES on the server",
                param="file",
                code="file_too_large",
            )
        self.hasher.update(chunk)
        self.file.write(chunk)

    def finish(self) -> StagedBlob:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return StagedBlob(sha256=self.hasher.hexdigest(), size=self.size, path=self.tmp_path)

    def abort(self) -> None:
        # Closing flushes what is buffered, which fails again on a full disk: the file goes regardless.
        with contextlib.suppress(OSError):
            if not self.file.closed:
                self.file.close()
        self.tmp_path.unlink(missing_ok=True)


def _storage_error(exc: BaseException, size: int) -> InsufficientStorageError:
    return InsufficientStorageError(
        f"the server's disk is full: the upload could not be stored ({size} bytes received; {exc}). "
        "Nothing was kept; retry once space is freed on the server",
        param="file",
        code="insufficient_storage",
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class BlobStore:
    """Content-addressed files under `root`: the protocol of every blob store, and the local backend."""

    # Whether blobs and artifacts live elsewhere than this machine's disk (then `fetch` downloads).
    remote = False

    def __init__(self, root: Path, *, lock: ReferenceLock | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = lock

    def describe(self) -> str:
        """Where the blobs are, for logs and error messages."""
        return str(self.root)

    def check(self) -> None:
        """Fail now, naming the store and the cause, when it cannot be used (run at start)."""
        probe = self.root / "tmp"
        probe.mkdir(parents=True, exist_ok=True)
        if not os.access(probe, os.W_OK):
            raise OSError(f"the blob directory {self.root} is not writable")

    def path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise NotFoundError(f"no blob {sha256!r}", code="blob_not_found")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        """The blob's size in bytes; `NotFoundError` when it is missing."""
        path = self.path(sha256)
        if not path.is_file():
            raise NotFoundError(
                f"the content of blob {sha256} is missing from {self.describe()}", code="blob_missing"
            )
        return path.stat().st_size

    def open(self, sha256: str) -> BinaryIO:
        path = self.path(sha256)
        if not path.is_file():
            raise NotFoundError(
                f"the content of blob {sha256} is missing from {self.root}", code="blob_missing"
            )
        return path.open("rb")

    def local_path(self, sha256: str) -> Path | None:
        """The blob as a file on this machine without fetching it (None when it is not here)."""
        path = self.path(sha256)
        return path if path.is_file() else None

    def fetch(self, sha256: str) -> Path:
        """The blob as a file on this machine (a remote store downloads it into its cache first)."""
        path = self.path(sha256)
        if not path.is_file():
            raise NotFoundError(
                f"the content of blob {sha256} is missing from {self.describe()}", code="blob_missing"
            )
        return path

    def iter_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream bytes `start`..`end` (inclusive; None: to the end) of a blob in chunks."""
        with self.open(sha256) as handle:
            handle.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = handle.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    # --- job artifacts (directories under jobs/<id>/): nothing to do on one disk ------------------
    def upload_tree(self, key: str, source: Path) -> None:
        """Keep the directory `source` under `key` (e.g. `jobs/ftjob-1/checkpoints/step-4`)."""

    def download_tree(self, key: str, dest: Path, *, files: list[dict[str, Any]] | None = None) -> bool:
        """Make `dest` hold the tree kept under `key`; False when there is none. `files` (from
        `tree_manifest`) pins what is fetched and checked to that version of the tree."""
        return dest.is_dir()

    def tree_manifest(self, key: str) -> list[dict[str, Any]] | None:
        """The files (`path`, `size`, `sha256`) of the complete tree kept under `key`; None when there
        is none (always, for the local store: its trees are where they were written)."""
        return None

    def upload_file(self, key: str, source: Path) -> None:
        """Keep one file (a job's log) under `key`."""

    def download_file(self, key: str, dest: Path) -> bool:
        return dest.is_file()

    def list_trees(self, key: str) -> list[str]:
        """Names of the complete trees directly under `key` (e.g. `step-4` under `.../checkpoints`)."""
        return []

    def delete_tree(self, key: str) -> None:
        """Remove what is kept under `key`."""

    @contextmanager
    def references(self) -> Iterator[None]:
        """Hold while placing a blob and recording its use, or while checking its uses and deleting it.

        An exclusive `flock` on the store's directory: it excludes other threads (each call opens its
        own descriptor) and other processes sharing the store alike, and the kernel drops it if the
        holder dies. A store shared by several machines is given a `lock` that spans them (a
        PostgreSQL advisory lock: `preftune.store.db.Database.advisory_lock`).
        """
        if self._lock is not None:
            with self._lock():
                yield
            return
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def stage_chunks(self, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StagedBlob:
        """Write an iterable of byte chunks under a temporary name; raises `PayloadTooLargeError` past `max_bytes`."""
        writer = self._writer(max_bytes)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.finish()
        except BaseException as exc:
            writer.abort()
            if is_disk_full(exc):
                raise _storage_error(exc, writer.size) from exc
            raise

    async def stage_async_chunks(
        self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> StagedBlob:
        """Like `stage_chunks` for an async stream (an HTTP request body)."""
        writer = self._writer(max_bytes)
        try:
            async for chunk in chunks:
                writer.write(chunk)
            return writer.finish()
        except BaseException as exc:
            writer.abort()
            if is_disk_full(exc):
                raise _storage_error(exc, writer.size) from exc
            raise

    def _writer(self, max_bytes: int | None) -> _Writer:
        try:
            return _Writer(self.root, max_bytes)
        except OSError as exc:  # no room even for the temporary file's directory entry
            if is_disk_full(exc):
                raise _storage_error(exc, 0) from exc
            raise

    def stage_file(self, source: BinaryIO, *, max_bytes: int | None = None) -> StagedBlob:
        """Stage a readable binary file object, read in 1 MiB chunks."""
        return self.stage_chunks(iter(lambda: source.read(CHUNK), b""), max_bytes=max_bytes)

    def stage_path(self, path: Path, *, max_bytes: int | None = None) -> StagedBlob:
        with Path(path).open("rb") as source:
            return self.stage_file(source, max_bytes=max_bytes)

    def prepare(self, staged: StagedBlob) -> None:
        """Do the slow part of placing before `references()` is taken (a remote store uploads the bytes
        under their sha256 key here, so the lock is never held across a transfer). Nothing to do on disk."""

    def place(self, staged: StagedBlob) -> BlobInfo:
        """Move a staged blob under its sha256 name. Call it inside `references()`."""
        final = self.path(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Same content, same name: a rename over an existing blob is harmless.
        os.replace(staged.path, final)
        _fsync_dir(final.parent)
        return BlobInfo(sha256=staged.sha256, size=staged.size, path=final)

    def discard(self, staged: StagedBlob) -> None:
        """Remove a staged blob that will not be placed (harmless once it was placed)."""
        staged.path.unlink(missing_ok=True)

    def sweep_staged(self, older_than_s: float = STALE_STAGED_SECONDS) -> int:
        """Remove staged files left by uploads whose process died; returns how many were removed.

        Age, not ownership, decides: several processes may share the store, and a file another
        one is still writing is younger than `older_than_s`.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for path in (self.root / "tmp").glob("upload-*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # placed or discarded meanwhile
                continue
        return removed

    def delete(self, sha256: str) -> None:
        """Remove a blob. Call it inside `references()`, after checking that nothing uses it."""
        self.path(sha256).unlink(missing_ok=True)


def open_blob_store(settings: Settings, *, lock: ReferenceLock | None = None) -> BlobStore:
    """The store `settings.blob_url` names: the local directory (default) or an `s3://` bucket.

    `lock` spans the processes that share the store (see `BlobStore.references`); without one, a
    file lock on this machine is used, which is enough when they all run here.
    """
    url = settings.blob_url
    if url and url.startswith("s3://"):
        from preftune.store.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings, lock=lock)
    if url and not url.startswith("file://"):
        raise ValueError(f"PREFTUNE_BLOB_URL must be s3://bucket/prefix or file:///dir (got {url!r})")
    root = Path(url.removeprefix("file://")) if url else settings.blobs_dir
    return BlobStore(root, lock=lock)
