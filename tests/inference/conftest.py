"""Fixtures for the inference tests: the tiny model as a named base model, LoRA adapters on it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers.models import install_base_model
from helpers.server import serve_in_thread
from preftune.config import Settings


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two different random LoRA adapters of the tiny model (PEFT format, as the trainer writes)."""
    from preftune.inference.tiny_adapter import build_random_adapter

    root = tmp_path_factory.mktemp("adapters")
    return [build_random_adapter(tiny_model_dir, root / f"adapter-{i}", seed=i) for i in range(2)]


@pytest.fixture
def models_home(preftune_home: Path, tiny_model_dir: Path) -> Path:
    """PREFTUNE_HOME whose models dir holds the tiny model as the base model `tiny-llama`."""
    install_base_model(preftune_home, tiny_model_dir)
    return preftune_home


@dataclass
class LiveServer:
    """The real application served by uvicorn on a loopback port, in a thread of the test process
    (so tests can look at the engine itself, e.g. to see that a disconnect stopped generation)."""

    app: Any
    settings: Settings
    base_url: str
    api_key: str
    owner_id: str

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def register_fine_tune(
        self, adapter: Path | None, *, merged: Path | None = None, suffix: str = "t"
    ) -> str:
        """Record a completed job's LoRA adapter (or merged model) as the owner's fine-tuned model."""
        from preftune.service.common import new_id, now
        from preftune.store.models import File, FineTunedModel, Job

        base = self.settings.models_dir / "tiny-llama"
        with self.app.state.db.session() as session:
            job_id = new_id("ftjob")
            name = f"ft:tiny-llama:{suffix}:{job_id}"
            file_id = new_id("file")
            session.add(_row(File, id=file_id, owner_id=self.owner_id, status="processed"))
            session.flush()
            session.add(
                _row(
                    Job,
                    id=job_id,
                    owner_id=self.owner_id,
                    model="tiny-llama",
                    status="completed",
                    training_file_id=file_id,
                )
            )
            session.flush()
            session.add(
                FineTunedModel(
                    id=new_id("model"),
                    owner_id=self.owner_id,
                    name=name,
                    job_id=job_id,
                    base_model="tiny-llama",
                    base_model_path=str(base),
                    adapter_path=str(adapter) if adapter else None,
                    model_path=None,
                    merged_path=str(merged) if merged else None,
                    created_at=now(),
                )
            )
            session.commit()
        return name


def _row(cls: Any, **values: Any) -> Any:
    """A table row with `values` and every other required column filled with a plain value."""
    from sqlalchemy import inspect

    from preftune.service.common import now

    for column in inspect(cls).columns:
        if column.key in values or column.nullable or column.default is not None or column.primary_key:
            continue
        python_type = column.type.python_type
        values[column.key] = (
            now() if python_type is float else 0 if python_type is int else {} if python_type is dict else "x"
        )
    return cls(**values)


@contextmanager
def _serve(home: Path, model_dir: Path) -> Iterator[LiveServer]:
    """Serve the real app with `model_dir` as the base model `tiny-llama`, with one owner's key."""
    from preftune.api.app import create_app
    from preftune.service import keys as key_service

    settings = Settings(home=home, adapter_cache_size=2)
    install_base_model(home, model_dir)
    app = create_app(settings)
    with serve_in_thread(app) as base_url:
        with app.state.db.session() as session:
            owner = key_service.create_owner(session, "tester")
            _, key = key_service.create_key(session, owner.id, "test")
        yield LiveServer(app, settings, base_url, key, owner.id)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """The server on the tiny model: every prompt gets the same answer, and it never ends early
    (good for lengths, limits and disconnects; useless for telling two answers apart)."""
    with _serve(tmp_path_factory.mktemp("live") / "home", tiny_model_dir) as server:
        yield server


@pytest.fixture(scope="session")
def lively_server(tmp_path_factory: pytest.TempPathFactory, lively_model_dir: Path) -> Iterator[LiveServer]:
    """The server on the lively model (still named `tiny-llama`), whose answers depend on the prompt:
    for tests that compare two answers (streamed or not, base or adapter, CLI or SDK)."""
    with _serve(tmp_path_factory.mktemp("lively-live") / "home", lively_model_dir) as server:
        yield server
