"""Settings from the environment (PREFTUNE_*) and their defaults.

This is the only module that reads the environment. Everything else receives a
`Settings` object (or a value taken from one), so tests can build their own.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service, with its default. Read once, passed around."""

    model_config = SettingsConfigDict(env_prefix="PREFTUNE_", extra="ignore")

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
    secret_key: str | None = Field(
        default=None,
        description="Fernet key that encrypts stored secrets (W&B keys). Default: HOME/secret.key, made on "
        "first use. Set the same value on every server and worker that share a database.",
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
