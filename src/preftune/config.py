"""Settings from the environment (PREFTUNE_*) and their defaults.

This is the only module that reads the environment. Everything else receives a
`Settings` object (or a value taken from one), so tests can build their own.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service, with its default. Read once, passed around."""

    # validate_by_name: `Settings(**other.model_dump())` works for the fields read from AWS_* names too.
    model_config = SettingsConfigDict(
        env_prefix="PREFTUNE_", extra="ignore", validate_by_name=True, validate_by_alias=True
    )

    home: Path = Field(
        default_factory=lambda: Path.home() / ".preftune",
        description="Where the embedded database, blobs, models and job directories live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is SQLite at HOME/preftune.db. PostgreSQL: postgresql+psycopg://...",
    )
    api_key: str | None = Field(default=None, description="API key used by the CLI and SDK.")
    base_url: str | None = Field(
        default=None, description="Server URL used by the CLI and SDK (default http://127.0.0.1:8600)."
    )
    host: str = "127.0.0.1"
    port: int = 8600
    workers: int = Field(default=1, ge=0, description="Local runner processes started by `preftune serve`.")
    max_upload_bytes: int = Field(default=5 * 1024**3, description="Largest accepted upload.")
    max_request_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest request body other than an upload (JSON bodies)."
    )
    rate_limit_per_second: float = Field(
        default=200.0, ge=0, description="Requests a second per API key (0: no limit); past it, 429."
    )
    rate_limit_burst: int = Field(default=400, ge=1, description="Requests one key may send at once.")
    max_concurrent_uploads: int = Field(
        default=8, ge=1, description="Uploads in progress per API key; one more is a 429."
    )
    lease_seconds: float = Field(
        default=30.0, gt=0, description="A runner's claim on a job expires after this."
    )
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    max_job_attempts: int = Field(default=3, ge=1, description="Runs of a job before it ends in error.")
    retry_backoff_seconds: float = Field(
        default=15.0,
        ge=0,
        description="The wait before a failed job's first retry, doubled for each later one (at most 10 "
        "minutes): a full disk or a dead node gets time to be mended before the next attempt.",
    )
    adapter_cache_size: int = Field(default=8, ge=1, description="LoRA adapters kept loaded per base model.")
    allow_on_demand_load: bool = Field(
        default=True, description="Load a model without a deployment on first request (cold start)."
    )
    device: str = Field(
        default="auto",
        description="Training device: auto (CUDA where there is one, else the CPU), cpu, cuda, cuda:N. "
        "With several processes per node each takes the GPU of its LOCAL_RANK.",
    )
    collective_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a collective of a multi-process training run waits for every rank before "
        "the run fails (a dead or stuck rank never hangs the job for ever).",
    )
    peak_flops: float | None = Field(
        default=None,
        gt=0,
        description="One device's peak FLOP/s, the denominator of the metrics' `mfu` (e.g. 9.89e14 for an "
        "H100's dense bf16). Default: a table of CUDA cards' dense peaks, else a matmul measured on the device.",
    )
    ray_address: str | None = Field(
        default=None,
        description="The Ray cluster that jobs with resources.launcher ray train on (`auto`, "
        "`ray://head:10001`, `head:6379`); default: a local Ray started for each such attempt.",
    )
    secret_key: str | None = Field(
        default=None,
        description="Fernet key that encrypts stored secrets (W&B keys). Default: HOME/secret.key, made on "
        "first use. Set the same value on every server and worker that share a database.",
    )

    blob_url: str | None = Field(
        default=None,
        description="Where uploaded files and job artifacts live: s3://bucket/prefix (S3-compatible object "
        "storage, with the AWS_* settings below) or file:///dir; default HOME/blobs on this machine.",
    )
    # The standard AWS variables, read here (the only module that reads the environment) and handed to
    # the S3 client; unset ones fall back to botocore's own chain (~/.aws, an instance role).
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL: the S3 endpoint (MinIO, R2, Ceph); unset: AWS.",
    )
    s3_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS_REGION or AWS_DEFAULT_REGION.",
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY")
    )
    aws_session_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SESSION_TOKEN")
    )
    s3_addressing_style: str = Field(
        default="auto", description="S3 addressing: auto, path (MinIO, most self-hosted stores) or virtual."
    )
    s3_max_attempts: int = Field(
        default=6, ge=1, description="Attempts of one S3 request (transient errors retried with backoff)."
    )
    blob_part_bytes: int = Field(
        default=16 * 1024**2,
        ge=5 * 1024**2,
        description="Part size of S3 multipart uploads (at least 5 MiB).",
    )
    blob_upload_concurrency: int = Field(
        default=4, ge=1, le=64, description="Parts of one S3 multipart upload in flight at once."
    )
    blob_cache_bytes: int = Field(
        default=20 * 1024**3,
        ge=0,
        description="With a remote blob store: bytes of blobs (training data) kept in HOME/blobs, least "
        "recently used evicted first.",
    )
    model_cache_bytes: int = Field(
        default=64 * 1024**3,
        ge=0,
        description="With a remote blob store: bytes of base models fetched from the bucket kept in "
        "HOME/cache/models (by the sha256 of their manifest), least recently used evicted first; a model "
        "a running job uses is never evicted.",
    )
    stale_upload_seconds: float = Field(
        default=6 * 3600.0,
        ge=0,
        description="A staged upload (or an open S3 multipart upload) untouched this long belongs to a "
        "process that died; it is removed when a server starts.",
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'preftune.db'}"

    @property
    def resolved_base_url(self) -> str:
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @cached_property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @cached_property
    def models_dir(self) -> Path:
        return self.home / "models"

    @cached_property
    def model_cache_dir(self) -> Path:
        return self.home / "cache" / "models"

    @cached_property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @cached_property
    def credentials_path(self) -> Path:
        return self.home / "credentials"

    @cached_property
    def secret_key_path(self) -> Path:
        return self.home / "secret.key"


class LaunchEnv(BaseSettings):
    """Where this process sits in a torchrun (or Ray Train) launch: the launcher's variables RANK,
    WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (no PREFTUNE_ prefix: the launcher sets them)."""

    model_config = SettingsConfigDict(extra="ignore")

    rank: int = Field(default=0, ge=0)
    world_size: int = Field(default=1, ge=1)
    local_rank: int = Field(default=0, ge=0)
    local_world_size: int = Field(default=1, ge=1)
    omp_num_threads: int | None = Field(default=None, description="OpenMP's threads, when the user set them.")


def get_settings() -> Settings:
    """Settings from the current environment (a fresh read each call)."""
    return Settings()
