"""`S3BlobStore`: the blob store on S3-compatible object storage (AWS S3, MinIO, R2, Ceph), via boto3.

Keys under the URL's prefix: `blobs/ab/<sha256>` for uploaded files (content-addressed, as on
disk) and `jobs/<job id>/...` for job artifacts (checkpoints, adapters, models, logs).

- An upload is staged on the local disk exactly as by the local store (hashed, fsynced, validated
  from there), then *placed* by one streaming multipart upload, part by part,
  each part carrying its SHA-256 so the server verifies what it received; a few parts are in flight
  at once (`blob_upload_concurrency`), so memory is a few parts whatever the size. Any failure aborts the
  multipart upload, so no parts are left behind; a process killed mid-upload leaves one open, and
  `sweep_staged` (run when the API starts) aborts those older than `stale_upload_seconds`.
  The row that names a blob commits only after the object exists.
- A download streams from the object (`Range` passed through). `fetch` copies a blob into the local
  directory, which becomes a cache bounded by `blob_cache_bytes`, least recently used evicted
  first; the copy is checked against its sha256 before it is used.
- A directory (a checkpoint) is uploaded file by file and then its manifest (each file's size and
  sha256): a tree without a manifest is incomplete (its writer died) and is never read.
- Transient errors (throttling, 5xx, dropped connections) are retried by botocore with exponential
  backoff (`standard` mode, `s3_max_attempts`). The code knows nothing of which S3 it talks to.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from preftune.config import Settings
from preftune.errors import NotFoundError, StorageUnavailableError
from preftune.store.blobs import (
    CHUNK,
    STALE_STAGED_SECONDS,
    BlobInfo,
    BlobStore,
    ReferenceLock,
    StagedBlob,
    _fsync_dir,
)

log = logging.getLogger("preftune.store.s3")

MANIFEST = ".preftune-tree.json"
DEFAULT_PART_BYTES = 16 * 1024**2


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/") (the prefix empty or ending with '/')."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"PREFTUNE_BLOB_URL {url!r} names no bucket: use s3://bucket/prefix")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _is_missing(exc: BaseException) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound")


class S3BlobStore(BlobStore):
    """Blobs and artifacts in `s3://bucket/prefix`; `root` (a local directory) stages uploads and caches."""

    remote = True

    def __init__(
        self,
        root: Path,
        *,
        bucket: str,
        prefix: str,
        client: Any,
        endpoint: str | None = None,
        part_bytes: int = DEFAULT_PART_BYTES,
        cache_bytes: int = 20 * 1024**3,
        upload_concurrency: int = 4,
        lock: ReferenceLock | None = None,
        check_client: Any = None,
    ) -> None:
        super().__init__(root, lock=lock)
        self.bucket = bucket
        self.prefix = prefix
        self.client = client
        self.check_client = check_client or client
        self.endpoint = endpoint
        self.part_bytes = part_bytes
        self.cache_bytes = cache_bytes
        self.upload_concurrency = max(1, upload_concurrency)

    @classmethod
    def from_settings(cls, settings: Settings, *, lock: ReferenceLock | None = None) -> S3BlobStore:
        bucket, prefix = parse_s3_url(settings.blob_url or "")
        return cls(
            settings.blobs_dir,
            bucket=bucket,
            prefix=prefix,
            client=make_client(settings),
            # The start-up check fails fast: a wrong endpoint is not a transient error to wait out.
            check_client=make_client(settings, max_attempts=2, connect_timeout=5.0),
            endpoint=settings.s3_endpoint_url,
            part_bytes=settings.blob_part_bytes,
            cache_bytes=settings.blob_cache_bytes,
            upload_concurrency=settings.blob_upload_concurrency,
            lock=lock,
        )

    # --- where -------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} (endpoint {self.endpoint or 'AWS default'})"

    def blob_key(self, sha256: str) -> str:
        self.path(sha256)  # validates the name
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256}"

    def _full(self, key: str) -> str:
        return f"{self.prefix}{key.strip('/')}"

    def check(self) -> None:
        """Reach the bucket with these credentials, or raise `StorageUnavailableError` naming the cause."""
        super().check()
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"the S3 endpoint {self.endpoint or '(AWS default)'}, bucket {self.bucket!r}"
        try:
            self.check_client.head_bucket(Bucket=self.bucket)
            # HEAD on a bucket can pass where reads are refused (a policy scoped to a prefix): list too.
            self.check_client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except NoCredentialsError as exc:
            raise StorageUnavailableError(
                f"{where}: no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ({exc})",
                code="storage_credentials",
            ) from exc
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden"):
                cause = (
                    f"the credentials were refused ({code}); check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY and the key's permissions on the bucket"
                )
            elif code in ("404", "NoSuchBucket", "NotFound"):
                cause = "the bucket does not exist; create it or fix PREFTUNE_BLOB_URL"
            else:
                cause = f"the endpoint answered {code}: {exc}"
            raise StorageUnavailableError(f"{where}: {cause}", code="storage_refused") from exc
        except BotoCoreError as exc:
            raise StorageUnavailableError(
                f"{where} cannot be reached: {exc}; check AWS_ENDPOINT_URL and the network",
                code="storage_unreachable",
            ) from exc

    # --- blobs ---------------------------------------------------------------------------------
    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
            return head
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise

    def exists(self, sha256: str) -> bool:
        return self._head(self.blob_key(sha256)) is not None

    def size(self, sha256: str) -> int:
        head = self._head(self.blob_key(sha256))
        if head is None:
            raise NotFoundError(
                f"the content of blob {sha256} is missing from {self.describe()}", code="blob_missing"
            )
        return int(head["ContentLength"])

    def _get(self, key: str, byte_range: str | None = None) -> Any:
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if byte_range:
            args["Range"] = byte_range
        try:
            return self.client.get_object(**args)["Body"]
        except ClientError as exc:
            if _is_missing(exc):
                raise NotFoundError(
                    f"{key} is missing from s3://{self.bucket} ({self.describe()})", code="blob_missing"
                ) from exc
            raise

    def open(self, sha256: str) -> BinaryIO:
        """A streaming, readable body of the whole blob (close it when done)."""
        body: BinaryIO = self._get(self.blob_key(sha256))
        return body

    def iter_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        byte_range = f"bytes={start}-{'' if end is None else end}" if start or end is not None else None
        body = self._get(self.blob_key(sha256), byte_range)
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def local_path(self, sha256: str) -> Path | None:
        path = self.path(sha256)
        return path if path.is_file() else None

    def fetch(self, sha256: str) -> Path:
        """The blob in the local cache: downloaded (and checked against its sha256) unless already there."""
        path = self.path(sha256)
        if path.is_file():
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{sha256[:12]}-", suffix=".part")
        tmp = Path(name)
        try:
            hasher = hashlib.sha256()
            body = self._get(self.blob_key(sha256))
            with os.fdopen(fd, "wb") as out:
                try:
                    for chunk in body.iter_chunks(CHUNK):
                        hasher.update(chunk)
                        out.write(chunk)
                finally:
                    body.close()
                out.flush()
                os.fsync(out.fileno())
            if hasher.hexdigest() != sha256:
                raise OSError(
                    f"blob {sha256} downloaded from {self.describe()} has sha256 {hasher.hexdigest()}: "
                    "the object is corrupt"
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.evict(keep=path)
        return path

    def evict(self, keep: Path | None = None) -> int:
        """Remove cached blobs, least recently used first, until the cache fits `cache_bytes`; returns
        how many were removed. `keep` (the blob just fetched) stays even when it alone is larger."""
        entries = []
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for path in sub.iterdir():
                if path.name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries, key=lambda entry: entry[0]):
            if total <= self.cache_bytes:
                break
            if keep is not None and path == keep:
                continue
            # A training process that has the file open keeps reading it: unlinking frees the name only.
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def _upload_staged(self, staged: StagedBlob) -> None:
        key = self.blob_key(staged.sha256)
        if self._head(key) is None:
            with staged.path.open("rb") as source:
                self.put_stream(key, source.read, metadata={"sha256": staged.sha256})

    def prepare(self, staged: StagedBlob) -> None:
        """Upload the staged bytes under their sha256 key (unless the bucket has them), outside
        `references()`: the lock spans every machine and must not wait on a transfer. Content-addressed,
        so uploading bytes no row uses yet is harmless; a delete that removes them meanwhile is undone
        by `place`."""
        self._upload_staged(staged)

    def place(self, staged: StagedBlob) -> BlobInfo:
        """Make sure the bucket has the staged blob (uploaded by `prepare`, or now if a delete removed it
        meanwhile), then keep the staged file as the cached copy. Call it inside `references()`."""
        self._upload_staged(staged)
        final = self.path(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        _fsync_dir(final.parent)
        self.evict(keep=final)
        return BlobInfo(sha256=staged.sha256, size=staged.size, path=final)

    def delete(self, sha256: str) -> None:
        """Remove a blob from the bucket and the cache. Call it inside `references()`."""
        self.client.delete_object(Bucket=self.bucket, Key=self.blob_key(sha256))
        self.path(sha256).unlink(missing_ok=True)

    def put_stream(
        self, key: str, read: Callable[[int], bytes], *, metadata: dict[str, str] | None = None
    ) -> int:
        """Upload what `read(n)` returns until it returns b'' to `key`, in parts; returns the size.

        Smaller than one part: one PUT. Otherwise a multipart upload, aborted on any failure (the
        reader's included), so an interrupted upload leaves no parts in the bucket.
        """
        meta = metadata or {}
        first = read(self.part_bytes)
        if len(first) < self.part_bytes:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=first,
                Metadata=meta,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=_b64_sha256(first),
            )
            return len(first)
        upload = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata=meta, ChecksumAlgorithm="SHA256"
        )
        upload_id = upload["UploadId"]

        def send(number: int, chunk: bytes) -> dict[str, Any]:
            checksum = _b64_sha256(chunk)
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=chunk,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
            return {"ETag": response["ETag"], "PartNumber": number, "ChecksumSHA256": checksum}

        # Up to `upload_concurrency` parts in flight (boto3 clients are thread-safe): memory is that many
        # parts plus the one being read, whatever the size.
        pool = ThreadPoolExecutor(max_workers=self.upload_concurrency, thread_name_prefix="s3-part")
        try:
            parts: list[dict[str, Any]] = []
            pending: list[Future[dict[str, Any]]] = []
            size = 0
            number = 0
            chunk = first
            while chunk:
                number += 1
                size += len(chunk)
                pending.append(pool.submit(send, number, chunk))
                chunk = b""  # drop our reference: the part lives only in its future until sent
                while len(pending) >= self.upload_concurrency:
                    parts.append(pending.pop(0).result())
                chunk = read(self.part_bytes)
            parts.extend(future.result() for future in pending)
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return size
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # no part may land after the abort
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                log.exception("could not abort multipart upload %s of %s; sweep_staged will", upload_id, key)
            raise
        finally:
            pool.shutdown(wait=True)

    def open_uploads(self) -> list[dict[str, Any]]:
        """Multipart uploads under the prefix that were started and neither completed nor aborted."""
        found: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            found.extend(page.get("Uploads", []))
        return found

    def sweep_staged(self, older_than_s: float = STALE_STAGED_SECONDS) -> int:
        """Remove local staged files and abort multipart uploads left by processes that died.

        Age decides, as for the local store: another server's upload in flight is younger.
        """
        removed = super().sweep_staged(older_than_s)
        cutoff = time.time() - older_than_s
        for upload in self.open_uploads():
            initiated = upload.get("Initiated")
            stamp = initiated.timestamp() if isinstance(initiated, datetime) else 0.0
            if stamp <= cutoff:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        return removed

    # --- job artifacts -------------------------------------------------------------------------
    def upload_file(self, key: str, source: Path) -> None:
        with source.open("rb") as handle:
            self.put_stream(self._full(key), handle.read)

    def download_file(self, key: str, dest: Path) -> bool:
        try:
            body = self._get(self._full(key))
        except NotFoundError:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in body.iter_chunks(CHUNK):
                    out.write(chunk)
            os.replace(name, dest)
        finally:
            body.close()
            Path(name).unlink(missing_ok=True)
        return True

    def upload_tree(self, key: str, source: Path) -> None:
        """Every file of `source` under `key/`, then the manifest that makes the tree complete."""
        files = []
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            rel = path.relative_to(source).as_posix()
            with path.open("rb") as handle:
                reader = _HashingReader(handle)
                size = self.put_stream(self._full(f"{key}/{rel}"), reader.read)
            files.append({"path": rel, "size": size, "sha256": reader.hasher.hexdigest()})
        manifest = json.dumps({"files": files, "written_at": datetime.now(UTC).isoformat()}).encode()
        self.client.put_object(Bucket=self.bucket, Key=self._full(f"{key}/{MANIFEST}"), Body=manifest)

    def _manifest(self, key: str) -> dict[str, Any] | None:
        try:
            body = self._get(self._full(f"{key}/{MANIFEST}"))
        except NotFoundError:
            return None
        try:
            data: dict[str, Any] = json.loads(body.read())
            return data
        finally:
            body.close()

    def tree_manifest(self, key: str) -> list[dict[str, Any]] | None:
        manifest = self._manifest(key)
        return None if manifest is None else list(manifest.get("files", []))

    def download_tree(self, key: str, dest: Path, *, files: list[dict[str, Any]] | None = None) -> bool:
        """Make `dest` the tree under `key` (each file checked against the manifest, or against `files`
        when given); False if there is no complete tree. A `dest` that already holds the manifest's
        files is left as it is."""
        if files is None:
            files = self.tree_manifest(key)
            if files is None:
                return dest.is_dir()
        if dest.is_dir() and all(
            (dest / f["path"]).is_file() and (dest / f["path"]).stat().st_size == f["size"] for f in files
        ):
            return True
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            for entry in files:
                target = tmp / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                hasher = hashlib.sha256()
                body = self._get(self._full(f"{key}/{entry['path']}"))
                try:
                    with target.open("wb") as out:
                        for chunk in body.iter_chunks(CHUNK):
                            hasher.update(chunk)
                            out.write(chunk)
                finally:
                    body.close()
                if hasher.hexdigest() != entry["sha256"]:
                    raise OSError(
                        f"{key}/{entry['path']} in {self.describe()} has sha256 {hasher.hexdigest()}, not its "
                        f"manifest's {entry['sha256']}: the object is corrupt"
                    )
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def _keys(self, key: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full(key) + "/"):
            for item in page.get("Contents", []):
                yield str(item["Key"])

    def list_trees(self, key: str) -> list[str]:
        base = self._full(key) + "/"
        names = []
        for full in self._keys(key):
            rest = full[len(base) :]
            parts = rest.split("/")
            if len(parts) == 2 and parts[1] == MANIFEST:
                names.append(parts[0])
        return sorted(names)

    def delete_tree(self, key: str) -> None:
        batch: list[dict[str, str]] = []
        for full in self._keys(key):
            batch.append({"Key": full})
            if len(batch) == 1000:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
                batch = []
        if batch:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})


class _HashingReader:
    """`read(n)` of a file that also hashes what it hands out."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.hasher = hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self.handle.read(n)
        self.hasher.update(data)
        return data


def make_client(settings: Settings, *, max_attempts: int | None = None, connect_timeout: float = 10.0) -> Any:
    """A boto3 S3 client from the settings (unset credentials: botocore's own chain)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise StorageUnavailableError(
            f"PREFTUNE_BLOB_URL is {settings.blob_url}, which needs boto3: pip install 'preftune[s3]'",
            code="storage_client_missing",
        ) from exc

    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts or settings.s3_max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=120,
        max_pool_connections=32,
        s3={"addressing_style": settings.s3_addressing_style},
    )

    def secret(value: Any) -> str | None:
        return value.get_secret_value() if value is not None else None

    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=secret(settings.aws_access_key_id),
        aws_secret_access_key=secret(settings.aws_secret_access_key),
        aws_session_token=secret(settings.aws_session_token),
        config=config,
    )
