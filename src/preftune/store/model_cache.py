"""A bounded, content-addressed cache of base models fetched from a remote blob store.

A runner on a machine of its own fetches the base model of a job from the bucket (`models/<name>/`,
a tree with a manifest listing each file's size and sha256). The copy is kept under
`HOME/cache/models/<digest>/`, where `digest` is the sha256 of the manifest's file list: the same
bytes are one entry whatever they are called, and a model re-imported with other bytes under the
same name is another entry. `HOME/models/<name>` is a symbolic link to the entry, so everything
that resolves a model by name (the trainer, `resolve_model`) finds it unchanged.

- **Atomic**: a tree is downloaded into a temporary directory beside the entries, each file checked
  against its sha256, then renamed to its digest: a half-fetched or corrupt model never appears
  under its real name.
- **Bounded**: after a fetch, entries are removed, least recently used first (each use touches the
  entry's mtime), until their total size fits `max_bytes` (`PREFTUNE_MODEL_CACHE_BYTES`). The entry
  just fetched stays even when it alone is larger.
- **Checked on every use**: a hit is checked cheaply (each file of the manifest present with its
  size; re-hashing many gigabytes on every attempt would cost about as much as the fetch it saves), so
  a file truncated or removed under the cache (a full disk, a hand clean-up) is fetched again instead
  of failing the job at load time. A damaged entry another job still holds is refused, not swapped
  from under it.
- **Never under a running job**: a user holds a shared `flock` on the entry's lock file (`ModelPin`)
  for as long as a job trains on it; eviction takes the exclusive lock without waiting and skips an
  entry it cannot get. Locks are per open file, so this holds between runners on one machine and
  between threads of one process alike; the kernel drops the lock of a process that dies.
  A user takes its shared lock *before* looking for the entry, and eviction renames an entry away
  only while holding the exclusive one, so a pinned entry cannot vanish between looking and using.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from preftune.store.blobs import SHA256_RE, BlobStore

log = logging.getLogger("preftune.store.model_cache")

LOCKS = "locks"


def manifest_digest(files: list[dict[str, Any]]) -> str:
    """The sha256 naming a tree: of its files' paths, sizes and sha256s, in path order."""
    canonical = [
        {"path": str(f["path"]), "size": int(f["size"]), "sha256": str(f["sha256"])}
        for f in sorted(files, key=lambda f: str(f["path"]))
    ]
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    path: Path
    size: int
    last_used: float


class ModelPin:
    """A cached model held in use: it is not evicted until `release()` (or the holder's death)."""

    def __init__(self, digest: str, path: Path, fd: int) -> None:
        self.digest = digest
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops its lock
            self._fd = None

    def __enter__(self) -> ModelPin:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _damage(path: Path, files: list[dict[str, Any]]) -> str | None:
    """What is wrong with the cached tree at `path` against its manifest (a missing file, a wrong
    size), or None when it looks whole. Sizes only: see the module's note on cost."""
    for f in files:
        item = path / str(f["path"])
        try:
            size = item.stat().st_size
        except FileNotFoundError:
            return f"{f['path']} is missing"
        if size != int(f["size"]):
            return f"{f['path']} has {size} bytes, the manifest {int(f['size'])}"
    return None


def _tree_size(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
    return total


class ModelCache:
    """Base models from `blobs` kept under `root` by digest, at most `max_bytes` of them."""

    def __init__(self, root: Path, blobs: BlobStore, max_bytes: int) -> None:
        self.root = Path(root)
        self.blobs = blobs
        self.max_bytes = max_bytes

    def entry_path(self, digest: str) -> Path:
        if not SHA256_RE.match(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / digest

    def _lock_fd(self, digest: str) -> int:
        # Lock files are never removed: removing one while another process opens it would give two
        # processes two different locks for one entry.
        locks = self.root / LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        return os.open(locks / f"{digest}.lock", os.O_RDWR | os.O_CREAT, 0o644)

    def pin(self, key: str) -> ModelPin | None:
        """The tree the store keeps under `key`, in the cache and pinned; fetched (and checked) when it
        is not here yet. None when the store has no complete tree under `key`."""
        files = self.blobs.tree_manifest(key)
        if files is None:
            return None
        digest = manifest_digest(files)
        path = self.entry_path(digest)
        fd = self._lock_fd(digest)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an eviction renames this entry away
            if not path.is_dir():
                self._fetch(key, files, path)
            elif (damage := _damage(path, files)) is not None:
                self._refetch(key, files, path, fd, damage)
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used
        except BaseException:
            os.close(fd)
            raise
        pin = ModelPin(digest, path, fd)
        try:
            self.evict(keep=digest)
        except OSError:  # a failed eviction leaves the cache larger, never the job without its model
            log.exception("could not evict from the model cache %s", self.root)
        return pin

    def _fetch(self, key: str, files: list[dict[str, Any]], dest: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{dest.name[:12]}-", dir=self.root))
        try:
            tree = tmp / "tree"
            self.blobs.download_tree(key, tree, files=files)  # each file checked against its sha256
            try:
                os.rename(tree, dest)
            except OSError:
                if not dest.is_dir():  # not another runner on this machine that fetched it first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _refetch(self, key: str, files: list[dict[str, Any]], path: Path, fd: int, damage: str) -> None:
        """Replace the damaged entry at `path` (this process holds its shared lock on `fd`)."""
        log.warning("model cache: %s is damaged (%s); fetching it again", path.name[:12], damage)
        # Only the exclusive lock may move an entry; the upgrade is not atomic (flock drops the shared
        # lock first), so the entry is looked at again under it.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_SH)
            raise OSError(
                f"the cached base model {path} is damaged ({damage}) and another job holds it; "
                "it is fetched again once no job uses it"
            ) from None
        try:
            if path.is_dir() and _damage(path, files) is not None:
                self._discard(path, "damaged")
            if not path.is_dir():
                self._fetch(key, files, path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_SH)

    def _discard(self, path: Path, why: str) -> None:
        """Rename the entry at `path` away (its exclusive lock held), then remove it: a user that pins it
        next finds it gone and fetches it again, never a directory half deleted."""
        doomed = self.root / f".{why}-{path.name}-{os.getpid()}"
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def entries(self) -> list[CacheEntry]:
        found: list[CacheEntry] = []
        if not self.root.is_dir():
            return found
        for path in self.root.iterdir():
            if not SHA256_RE.match(path.name) or not path.is_dir():
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append(CacheEntry(path.name, path, _tree_size(path), path.stat().st_mtime))
        return sorted(found, key=lambda entry: entry.last_used)

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove entries, least recently used first, until the cache fits `max_bytes`; entries in use
        (pinned) and `keep` stay. Returns the digests removed."""
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        removed: list[str] = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.digest == keep:
                continue
            fd = self._lock_fd(entry.digest)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("model cache: %s is in use; not evicting it", entry.digest[:12])
                    continue
                try:
                    self._discard(entry.path, "evict")
                except FileNotFoundError:
                    continue
            finally:
                os.close(fd)
            total -= entry.size
            removed.append(entry.digest)
        return removed


def link_model(models_dir: Path, name: str, target: Path) -> Path:
    """Make `models_dir/name` a symbolic link to `target` (replaced atomically); returns the link."""
    models_dir.mkdir(parents=True, exist_ok=True)
    link = models_dir / name
    if link.is_symlink() and os.readlink(link) == str(target):
        return link
    tmp = models_dir / f".{name}-{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return link
