"""The blob store: content addressing, streaming writes, the size limit, and no half-written files."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from preftune.errors import NotFoundError, PayloadTooLargeError
from preftune.store.blobs import BlobInfo, BlobStore


def _put(store: BlobStore, chunks: Iterator[bytes]) -> BlobInfo:
    """Stage and place at once, as an accepted upload does."""
    staged = store.stage_chunks(chunks)
    with store.references():
        return store.place(staged)


def _chunks(n: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(n):
        yield bytes([i % 251]) * size


def test_blobs_are_named_by_sha256_and_deduplicated(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"".join(_chunks(10))
    info = _put(store, _chunks(10))
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert info.path == tmp_path / "blobs" / info.sha256[:2] / info.sha256
    assert info.path.read_bytes() == data
    again = _put(store, _chunks(10))
    assert again.path == info.path
    with store.open(info.sha256) as handle:
        assert handle.read(3) == data[:3]
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_async_stream_is_stored_like_a_sync_one(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")

    async def body() -> AsyncIterator[bytes]:
        for chunk in _chunks(4):
            yield chunk

    staged = asyncio.run(store.stage_async_chunks(body()))
    assert staged.sha256 == store.stage_chunks(_chunks(4)).sha256
    assert staged.path.read_bytes() == b"".join(_chunks(4))


def test_too_large_upload_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(PayloadTooLargeError) as info:
        store.stage_chunks(_chunks(10), max_bytes=100_000)
    assert info.value.param == "file" and "PREFTUNE_MAX_UPLOAD_BYTES" in info.value.message
    leftovers = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_failing_stream_leaves_no_partial_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")

    def broken() -> Iterator[bytes]:
        yield b"x" * 1000
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.stage_chunks(broken())
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []


def test_bad_or_missing_names_are_not_found(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(NotFoundError):
        store.path("../../etc/passwd")
    with pytest.raises(NotFoundError):
        store.open("0" * 64)
    store.delete("0" * 64)  # deleting a missing blob is harmless


def test_a_staged_blob_is_invisible_until_placed_and_discard_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"".join(_chunks(3))
    staged = store.stage_chunks(_chunks(3))
    assert staged.sha256 == hashlib.sha256(data).hexdigest() and staged.path.read_bytes() == data
    assert not store.exists(staged.sha256)
    with store.references():
        placed = store.place(staged)
    assert placed.path == store.path(staged.sha256) and placed.path.read_bytes() == data
    store.discard(staged)  # after placing: harmless, the blob stays
    assert store.exists(staged.sha256)
    dropped = store.stage_chunks(_chunks(2))
    store.discard(dropped)
    assert not store.exists(dropped.sha256)
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == [placed.path]


def test_sweep_removes_only_stale_staged_uploads(tmp_path: Path) -> None:
    """A process killed mid-upload leaves a staged file; the sweep removes it, never a live one."""
    store = BlobStore(tmp_path / "blobs")
    placed = _put(store, _chunks(2))
    stale = store.stage_chunks(_chunks(3))  # as if its process died before placing it
    old = time.time() - 7 * 3600
    os.utime(stale.path, (old, old))
    live = store.stage_chunks(_chunks(4))  # an upload still in flight
    assert store.sweep_staged() == 1
    assert not stale.path.exists()
    assert live.path.exists() and placed.path.exists()
    assert store.sweep_staged() == 0
    store.discard(live)
