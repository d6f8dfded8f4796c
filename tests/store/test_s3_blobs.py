"""The S3 blob store against a real S3 server over HTTP (moto's standalone server, `s3_server`).

Multipart uploads verified part by part, content addressing, streamed ranges, the local cache (LRU,
checked by sha256), directory trees complete only with their manifest, an interrupted upload that
leaves no parts, and start-up checks that name the endpoint and the cause.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import s3
from helpers.ports import free_port
from preftune.errors import NotFoundError, StorageUnavailableError
from preftune.store.blobs import BlobInfo, BlobStore, open_blob_store
from preftune.store.s3 import S3BlobStore

MiB = 1024 * 1024


def _store(tmp_path: Path, endpoint: str, bucket: str, **extra: object) -> S3BlobStore:
    store = open_blob_store(
        s3.s3_settings(tmp_path / "home", endpoint, bucket, blob_part_bytes=5 * MiB, **extra)
    )
    assert isinstance(store, S3BlobStore)
    return store


def _chunks(total: int, seed: int = 0) -> Iterator[bytes]:
    for i in range(total // MiB):
        yield hashlib.sha256(f"{seed}-{i}".encode()).digest() * (MiB // 32)


def _put(store: BlobStore, chunks: Iterator[bytes]) -> BlobInfo:
    staged = store.stage_chunks(chunks)
    with store.references():
        return store.place(staged)


def test_upload_is_multipart_by_sha256_and_reads_back_whole_and_by_range(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    store = _store(tmp_path, s3_server, s3_bucket)
    store.check()
    data = b"".join(_chunks(12 * MiB))
    info = _put(store, _chunks(12 * MiB))
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    key = f"pt/blobs/{info.sha256[:2]}/{info.sha256}"
    assert s3.list_keys(s3_server, s3_bucket) == [key]
    head = s3.client(s3_server).head_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert head["Metadata"]["sha256"] == info.sha256
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5 MiB at most: a multipart upload
    assert s3.open_uploads(s3_server, s3_bucket) == []

    assert store.exists(info.sha256) and store.size(info.sha256) == len(data)
    assert (
        b"".join(store.iter_range(info.sha256, 7 * MiB - 3, 7 * MiB + 4)) == data[7 * MiB - 3 : 7 * MiB + 5]
    )
    assert b"".join(store.iter_range(info.sha256)) == data
    # The same bytes again: nothing new in the bucket.
    assert _put(store, _chunks(12 * MiB)).sha256 == info.sha256
    assert s3.list_keys(s3_server, s3_bucket) == [key]


def test_a_fresh_machine_fetches_through_its_cache_and_refuses_a_corrupt_object(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    writer = _store(tmp_path / "a", s3_server, s3_bucket)
    info = _put(writer, _chunks(6 * MiB))
    reader = _store(tmp_path / "b", s3_server, s3_bucket)
    assert reader.local_path(info.sha256) is None
    path = reader.fetch(info.sha256)
    assert path.read_bytes() == info.path.read_bytes() and reader.local_path(info.sha256) == path

    # The object changed behind our back (bit rot, a bad copy): a new machine must not train on it.
    key = f"pt/blobs/{info.sha256[:2]}/{info.sha256}"
    s3.client(s3_server).put_object(Bucket=s3_bucket, Key=key, Body=b"not the same bytes")
    third = _store(tmp_path / "c", s3_server, s3_bucket)
    with pytest.raises(OSError, match="corrupt"):
        third.fetch(info.sha256)
    assert third.local_path(info.sha256) is None
    with pytest.raises(NotFoundError):
        third.fetch("0" * 64)


def test_cache_keeps_the_most_recently_used_within_its_bound(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    writer = _store(tmp_path / "w", s3_server, s3_bucket)
    blobs = [_put(writer, _chunks(2 * MiB, seed=n)).sha256 for n in range(3)]
    cache = _store(tmp_path / "r", s3_server, s3_bucket, blob_cache_bytes=5 * MiB)
    cache.fetch(blobs[0])
    cache.fetch(blobs[1])
    cache.fetch(blobs[0])  # used again: now the most recent
    cache.fetch(blobs[2])  # 6 MiB > 5 MiB: the least recently used (blobs[1]) goes
    assert cache.local_path(blobs[1]) is None
    assert cache.local_path(blobs[0]) is not None and cache.local_path(blobs[2]) is not None
    assert cache.fetch(blobs[1]).stat().st_size == 2 * MiB  # fetched again on demand


def test_interrupted_upload_aborts_its_multipart_upload(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    store = _store(tmp_path, s3_server, s3_bucket)
    source = _chunks(40 * MiB)
    sent = 0

    def read(n: int) -> bytes:
        nonlocal sent
        if sent >= 12 * MiB:
            raise ConnectionResetError("the client went away")
        data = b"".join(next(source) for _ in range(n // MiB))
        sent += len(data)
        return data

    with pytest.raises(ConnectionResetError):
        store.put_stream("pt/blobs/interrupted", read)
    assert s3.open_uploads(s3_server, s3_bucket) == []
    assert s3.list_keys(s3_server, s3_bucket) == []


def test_sweep_aborts_uploads_left_open_by_a_dead_process(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    raw = s3.client(s3_server)
    upload = raw.create_multipart_upload(Bucket=s3_bucket, Key="pt/blobs/ab/dead")
    raw.upload_part(
        Bucket=s3_bucket, Key="pt/blobs/ab/dead", UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
    )
    other = raw.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/not-ours")
    store = _store(tmp_path, s3_server, s3_bucket)
    # (moto dates every multipart upload 2010, so the age rule that spares another server's upload in
    # flight cannot be shown here; only the prefix rule can.)
    assert store.sweep_staged(older_than_s=0) == 1
    assert [u["UploadId"] for u in s3.open_uploads(s3_server, s3_bucket)] == [other["UploadId"]]


def test_trees_are_complete_only_with_their_manifest(tmp_path: Path, s3_server: str, s3_bucket: str) -> None:
    store = _store(tmp_path, s3_server, s3_bucket)
    source = tmp_path / "step-4"
    (source / "sub").mkdir(parents=True)
    (source / "adapter_config.json").write_text("{}")
    (source / "sub" / "weights.bin").write_bytes(b"".join(_chunks(6 * MiB)))
    store.upload_tree("jobs/ftjob-1/checkpoints/step-4", source)
    # A writer that died before its manifest: files but no tree.
    s3.client(s3_server).put_object(
        Bucket=s3_bucket, Key="pt/jobs/ftjob-1/checkpoints/step-8/x.bin", Body=b"x"
    )
    assert store.list_trees("jobs/ftjob-1/checkpoints") == ["step-4"]

    dest = tmp_path / "elsewhere" / "step-4"
    assert store.download_tree("jobs/ftjob-1/checkpoints/step-4", dest)
    assert (dest / "sub" / "weights.bin").read_bytes() == (source / "sub" / "weights.bin").read_bytes()
    assert not store.download_tree("jobs/ftjob-1/checkpoints/step-8", tmp_path / "none")
    store.delete_tree("jobs/ftjob-1")
    assert s3.list_keys(s3_server, s3_bucket) == []


def test_check_names_the_endpoint_and_the_cause(tmp_path: Path, s3_server: str, s3_bucket: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StorageUnavailableError, match="cannot be reached") as info:
        _store(tmp_path, nowhere, s3_bucket).check()
    assert nowhere in info.value.message
    with pytest.raises(StorageUnavailableError, match="bucket does not exist"):
        _store(tmp_path, s3_server, "no-such-bucket").check()
    # Make the server check credentials (moto's switch, over HTTP); our key pair is unknown to it.
    httpx.post(f"{s3_server}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        with pytest.raises(StorageUnavailableError, match="credentials were refused") as info:
            _store(tmp_path, s3_server, s3_bucket).check()
        assert s3_server in info.value.message
    finally:
        httpx.post(f"{s3_server}/moto-api/reset-auth", content=b"inf").raise_for_status()


class _Body:
    """The raw body of a response made up by `_Flaky` (botocore reads it through `stream()`)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self.data


class _Flaky:
    """Fail the first `failures` requests of an operation on the store's own boto3 client, the way a
    busy S3 does: alternately a 503 SlowDown answer and a connection dropped mid-request. A botocore
    `before-send` hook: the request is answered (or dropped) before it leaves, so botocore's own retry
    logic sees exactly what it would from the network."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, request: Any, **_: object) -> Any:
        from botocore.awsrequest import AWSResponse
        from botocore.exceptions import ConnectionClosedError

        with self.lock:
            self.calls += 1
            call = self.calls
        if call > self.failures:
            return None  # sent for real
        if call % 2:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))
        raise ConnectionClosedError(endpoint_url=request.url)


def test_transient_errors_are_retried_with_backoff(tmp_path: Path, s3_server: str, s3_bucket: str) -> None:
    writer = _store(tmp_path / "w", s3_server, s3_bucket)
    parts = _Flaky(failures=3)
    writer.client.meta.events.register("before-send.s3.UploadPart", parts)
    data = b"".join(_chunks(12 * MiB))
    info = _put(writer, _chunks(12 * MiB))  # three parts; three failed sends among them, each retried
    assert parts.calls == 3 + 3
    assert s3.open_uploads(s3_server, s3_bucket) == []

    reader = _store(tmp_path / "r", s3_server, s3_bucket)
    gets = _Flaky(failures=2)
    reader.client.meta.events.register("before-send.s3.GetObject", gets)
    assert reader.fetch(info.sha256).read_bytes() == data
    assert gets.calls == 2 + 1


def test_an_outage_past_the_retries_fails_and_leaves_no_parts(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    store = _store(tmp_path, s3_server, s3_bucket, s3_max_attempts=3)
    down = _Flaky(failures=10**6)
    store.client.meta.events.register("before-send.s3.UploadPart", down)
    staged = store.stage_chunks(_chunks(12 * MiB))
    with pytest.raises(Exception, match=r"SlowDown|Connection was closed"):
        store.prepare(staged)
    assert down.calls >= 3  # each part tried s3_max_attempts times before giving up
    assert s3.open_uploads(s3_server, s3_bucket) == []
    assert s3.list_keys(s3_server, s3_bucket) == []
    store.discard(staged)
