"""Base models through a runner's bounded model cache, against a real S3 server (moto's, `s3_server`).

A fresh home fetches a model imported on another machine into `HOME/cache/models/<digest>` (the sha256
of its manifest) and links `HOME/models/<name>` to it; the cache keeps the most recently used within
its bound, refuses a corrupt object without leaving anything under its real name, and never evicts a
model a job holds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import s3
from preftune.config import Settings
from preftune.contracts.base_models import resolve_model
from preftune.service import artifacts
from preftune.store.blobs import BlobStore, open_blob_store
from preftune.store.model_cache import ModelCache, manifest_digest

MiB = 1024 * 1024


def _machine(
    tmp_path: Path, name: str, endpoint: str, bucket: str, **extra: object
) -> tuple[Settings, BlobStore]:
    settings = s3.s3_settings(tmp_path / name, endpoint, bucket, **extra)
    return settings, open_blob_store(settings)


def _model(dest: Path, seed: int, size: int = 2 * MiB) -> Path:
    """A model directory as the cache sees it: a config and `size` bytes of weights of its own."""
    dest.mkdir(parents=True)
    (dest / "config.json").write_text(f'{{"model_type": "llama", "seed": {seed}}}')
    block = hashlib.sha256(str(seed).encode()).digest()
    (dest / "model.safetensors").write_bytes(block * (size // len(block)))
    return dest


def _publish(tmp_path: Path, endpoint: str, bucket: str, names: list[str]) -> None:
    _, blobs = _machine(tmp_path, "api", endpoint, bucket)
    for seed, name in enumerate(names):
        assert artifacts.publish_base_model(blobs, name, _model(tmp_path / "src" / name, seed))


def _cached(settings: Settings) -> set[str]:
    root = settings.model_cache_dir
    return {p.name for p in root.iterdir() if len(p.name) == 64} if root.is_dir() else set()


def test_a_fresh_home_fetches_the_base_model_through_the_cache(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    _publish(tmp_path, s3_server, s3_bucket, ["mine"])
    runner, blobs = _machine(tmp_path, "runner", s3_server, s3_bucket)
    with pytest.raises(Exception, match="not found"):
        resolve_model("mine", runner.models_dir)

    pin = artifacts.fetch_base_model(runner, blobs, "mine")
    assert pin is not None and pin.held
    files = blobs.tree_manifest("models/mine")
    assert files is not None and pin.digest == manifest_digest(files)
    assert pin.path == runner.model_cache_dir / pin.digest
    link = runner.models_dir / "mine"
    assert link.is_symlink() and link.resolve() == pin.path
    resolved = resolve_model("mine", runner.models_dir)
    source = tmp_path / "src" / "mine" / "model.safetensors"
    assert (resolved / "model.safetensors").read_bytes() == source.read_bytes()
    assert not (resolved / ".preftune-tree.json").exists()
    # Nothing temporary is left beside the entry.
    assert sorted(p.name for p in runner.model_cache_dir.iterdir()) == sorted([pin.digest, "locks"])
    pin.release()

    # A second use is a cache hit: the same files, not downloaded again.
    inode = (pin.path / "model.safetensors").stat().st_ino
    again = artifacts.fetch_base_model(runner, blobs, "mine")
    assert again is not None and again.digest == pin.digest
    assert (again.path / "model.safetensors").stat().st_ino == inode
    again.release()

    # Embedded models, paths and a model the bucket lacks are not the cache's.
    assert artifacts.fetch_base_model(runner, blobs, "smollm2-135m-instruct") is None
    assert artifacts.fetch_base_model(runner, blobs, str(tmp_path / "src" / "mine")) is None
    assert artifacts.fetch_base_model(runner, blobs, "nobody-imported-this") is None


def test_eviction_drops_the_least_recently_used_within_the_bound(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    _publish(tmp_path, s3_server, s3_bucket, ["m0", "m1", "m2"])
    runner, blobs = _machine(tmp_path, "runner", s3_server, s3_bucket, model_cache_bytes=5 * MiB)

    def use(name: str) -> str:
        pin = artifacts.fetch_base_model(runner, blobs, name)
        assert pin is not None
        pin.release()
        return pin.digest

    d0, d1 = use("m0"), use("m1")
    assert use("m0") == d0  # used again: now the most recent
    d2 = use("m2")  # three of ~2 MiB > 5 MiB: the least recently used (m1) goes
    assert _cached(runner) == {d0, d2}
    assert not (runner.models_dir / "m1").exists()  # its link dangles: the next use fetches it again
    with pytest.raises(Exception, match="not found"):
        resolve_model("m1", runner.models_dir)
    assert use("m1") == d1
    assert _cached(runner) == {d2, d1}  # and m0 is now the least recent
    assert resolve_model("m1", runner.models_dir).is_dir()


def test_a_corrupt_object_is_refused_and_leaves_nothing_under_its_name(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    _publish(tmp_path, s3_server, s3_bucket, ["mine"])
    # The object changed behind the manifest's back (bit rot, a bad copy): no runner may train on it.
    s3.client(s3_server).put_object(
        Bucket=s3_bucket, Key="pt/models/mine/model.safetensors", Body=b"x" * (2 * MiB)
    )
    runner, blobs = _machine(tmp_path, "runner", s3_server, s3_bucket)
    with pytest.raises(OSError, match="corrupt"):
        artifacts.fetch_base_model(runner, blobs, "mine")
    assert _cached(runner) == set()
    assert [p.name for p in runner.model_cache_dir.iterdir()] == ["locks"]  # no half-fetched tree left
    assert not (runner.models_dir / "mine").exists() and not (runner.models_dir / "mine").is_symlink()


def test_a_model_in_use_is_not_evicted(tmp_path: Path, s3_server: str, s3_bucket: str) -> None:
    _publish(tmp_path, s3_server, s3_bucket, ["m0", "m1", "m2"])
    runner, blobs = _machine(tmp_path, "runner", s3_server, s3_bucket, model_cache_bytes=3 * MiB)
    held = artifacts.fetch_base_model(runner, blobs, "m0")  # a job trains on it
    assert held is not None
    other = artifacts.fetch_base_model(runner, blobs, "m1")  # over the bound, but m0 is in use
    assert other is not None
    other.release()
    assert _cached(runner) == {held.digest, other.digest}
    assert (runner.models_dir / "m0" / "model.safetensors").is_file()

    held.release()  # the job ended: m0 (now least recent of the free ones) may go
    last = artifacts.fetch_base_model(runner, blobs, "m2")
    assert last is not None
    assert _cached(runner) == {last.digest}
    last.release()


def test_a_pin_held_by_another_process_blocks_eviction(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    _publish(tmp_path, s3_server, s3_bucket, ["m0", "m1"])
    runner, blobs = _machine(tmp_path, "runner", s3_server, s3_bucket, model_cache_bytes=MiB)
    pin = artifacts.fetch_base_model(runner, blobs, "m0")
    assert pin is not None
    pin.release()
    # Another runner on this machine holds m0's lock (as `ModelCache.pin` does) while it trains.
    lock = runner.model_cache_dir / "locks" / f"{pin.digest}.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_SH); "
            "print('held', flush=True); sys.stdin.read()",
            str(lock),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cache = ModelCache(runner.model_cache_dir, blobs, runner.model_cache_bytes)
        other = cache.pin("models/m1")
        assert other is not None
        other.release()
        assert pin.digest in _cached(runner)
    finally:
        holder.communicate("")
    assert cache.evict(keep=other.digest) == [pin.digest]  # the other process is gone, and its lock too
    assert os.path.isdir(runner.model_cache_dir / other.digest)


def test_a_damaged_cache_entry_is_fetched_again_unless_a_job_holds_it(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    _publish(tmp_path, s3_server, s3_bucket, ["mine"])
    runner, blobs = _machine(tmp_path, "runner", s3_server, s3_bucket)
    source = (tmp_path / "src" / "mine" / "model.safetensors").read_bytes()
    pin = artifacts.fetch_base_model(runner, blobs, "mine")
    assert pin is not None
    weights = pin.path / "model.safetensors"
    pin.release()

    # A file cut short under the cache (a full disk during a copy, a hand clean-up): the next use
    # fetches the tree again rather than handing the trainer half a model.
    weights.write_bytes(source[: MiB // 2])
    again = artifacts.fetch_base_model(runner, blobs, "mine")
    assert again is not None and again.digest == pin.digest
    assert weights.read_bytes() == source
    assert sorted(p.name for p in runner.model_cache_dir.iterdir()) == sorted([pin.digest, "locks"])

    # Damaged while a job holds it: refused with the reason, and the holder's files stay where they are.
    (again.path / "config.json").unlink()
    with pytest.raises(OSError, match=r"damaged \(config.json is missing\) and another job holds it"):
        ModelCache(runner.model_cache_dir, blobs, runner.model_cache_bytes).pin("models/mine")
    assert weights.read_bytes() == source
    again.release()
    fixed = artifacts.fetch_base_model(runner, blobs, "mine")
    assert fixed is not None and (fixed.path / "config.json").is_file()
    fixed.release()
