"""Job artifacts (checkpoints, adapters, models, merged models, logs) in the blob store, so that any
machine can read what any runner wrote.

Every machine lays a job out the same way under its own `PREFTUNE_HOME`: `jobs/<job id>/checkpoints/
step-N/`, `adapter/`, `model/`, `merged/`, `train.log`. The store keeps each under the same key
(`jobs/<job id>/...`). A runner uploads a checkpoint as soon as the trainer has written it and the
outputs before the job is marked completed, so no row ever names an artifact the bucket lacks; a
reader (an API server, another runner resuming the job) fetches a tree into its own `jobs/`
directory on first use. With the local store, everything is on the one disk and these calls only
answer where it is.
"""

from __future__ import annotations

from pathlib import Path

from preftune.config import Settings
from preftune.store.blobs import BlobStore
from preftune.store.model_cache import ModelCache, ModelPin, link_model

LOG_NAME = "train.log"
# Imported base models (`preftune models import DIR --as NAME` with a remote store) live under models/<name>/.
MODELS_KEY = "models"
OUTPUT_NAMES = ("adapter", "model", "merged")


def job_key(job_id: str, *parts: str) -> str:
    return "/".join(["jobs", job_id, *parts])


def key_of(path: Path | str) -> str | None:
    """The store key of a path inside some machine's `jobs/<job id>/` (None for any other path).

    Paths recorded in the database are the writing runner's; the part from `jobs/ftjob-…/` on is the
    same everywhere."""
    parts = Path(path).parts
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "jobs" and parts[index + 1].startswith("ftjob-"):
            return "/".join(parts[index:])
    return None


def local_artifact(settings: Settings, blobs: BlobStore, path: Path | str) -> Path:
    """`path` (a directory a runner recorded) as a directory on this machine: itself when it is here,
    else this machine's copy under `HOME/jobs/...`, fetched from the store if needed. A path the store
    does not have comes back as it was (the caller's `is_dir()` check then reports it missing)."""
    here = Path(path)
    if here.is_dir():
        return here
    key = key_of(here)
    if key is None or not blobs.remote:
        return here
    local = settings.home / key
    return local if blobs.download_tree(key, local) else here


def fetch_tree(settings: Settings, blobs: BlobStore, job_id: str, *parts: str) -> Path:
    """`HOME/jobs/<job id>/<parts>` on this machine, fetched from the store when it is remote."""
    local = settings.jobs_dir.joinpath(job_id, *parts)
    if blobs.remote and not local.is_dir():
        blobs.download_tree(job_key(job_id, *parts), local)
    return local


def publish_checkpoint(blobs: BlobStore, job_id: str, path: Path) -> None:
    """Upload a checkpoint the trainer just wrote (`.../checkpoints/step-N`), then the job's log."""
    if not blobs.remote:
        return
    blobs.upload_tree(job_key(job_id, "checkpoints", path.name), path)
    publish_log(blobs, job_id, path.parent.parent)


def publish_outputs(blobs: BlobStore, job_id: str, output_dir: Path) -> None:
    """Upload the final outputs (`adapter/`, `model/`, `merged/`) and the log of a finished job."""
    if not blobs.remote:
        return
    for name in OUTPUT_NAMES:
        if (output_dir / name).is_dir():
            blobs.upload_tree(job_key(job_id, name), output_dir / name)
    publish_log(blobs, job_id, output_dir)


def publish_log(blobs: BlobStore, job_id: str, output_dir: Path) -> None:
    if blobs.remote and (output_dir / LOG_NAME).is_file():
        blobs.upload_file(job_key(job_id, LOG_NAME), output_dir / LOG_NAME)


def remote_checkpoint_steps(blobs: BlobStore, job_id: str) -> dict[int, str]:
    """Complete checkpoints of a job in the store: step -> key."""
    steps: dict[int, str] = {}
    for name in blobs.list_trees(job_key(job_id, "checkpoints")):
        if name.startswith("step-") and name.removeprefix("step-").isdigit():
            steps[int(name.removeprefix("step-"))] = job_key(job_id, "checkpoints", name)
    return steps


def publish_base_model(blobs: BlobStore, name: str, path: Path) -> bool:
    """Upload an imported base model (`models/<name>/`) so runners on other machines can fetch it;
    False when the store is local or the bucket already has it."""
    if not blobs.remote or name in blobs.list_trees(MODELS_KEY):
        return False
    blobs.upload_tree(f"{MODELS_KEY}/{name}", path)
    return True


def fetch_base_model(settings: Settings, blobs: BlobStore, name: str) -> ModelPin | None:
    """Make the base model `name` resolvable on this machine, and hold it there while a job uses it.

    A model imported on another machine is fetched from the bucket (`models/<name>/`) into the bounded
    model cache (`store.model_cache`: by the sha256 of its manifest, least recently used evicted) and
    `HOME/models/<name>` links to it. The pin returned keeps it from being evicted: release it when the
    job's attempt ends. None when there is nothing to hold: a local store, an embedded model (imported
    by each machine itself), a path or hub id (left to `resolve_model`, whose error names what is
    missing), a model imported into this machine's own `models/` directory, or one the bucket lacks."""
    from preftune.contracts.base_models import EMBEDDED_MODELS

    if not blobs.remote or name in EMBEDDED_MODELS or "/" in name or name.startswith("."):
        return None
    local = settings.models_dir / name
    if local.exists() and not local.is_symlink():
        return None  # imported here (`preftune models import` on this machine): not the cache's to manage
    cache = ModelCache(settings.model_cache_dir, blobs, settings.model_cache_bytes)
    pin = cache.pin(f"{MODELS_KEY}/{name}")
    if pin is None:
        return None
    try:
        link_model(settings.models_dir, name, pin.path)
    except BaseException:
        pin.release()
        raise
    return pin


def publish_imported_model(settings: Settings, name: str, path: Path) -> bool:
    """`preftune models import` with `PREFTUNE_BLOB_URL=s3://...`: the imported directory model goes to
    the bucket too (embedded models are imported by each machine itself). False when nothing was sent."""
    from preftune.contracts.base_models import EMBEDDED_MODELS
    from preftune.store.blobs import open_blob_store

    if not settings.blob_url or not settings.blob_url.startswith("s3://") or name in EMBEDDED_MODELS:
        return False
    blobs = open_blob_store(settings)
    blobs.check()
    return publish_base_model(blobs, name, path)
