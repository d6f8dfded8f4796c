"""Fixtures for the inference tests: the tiny model as a named base model, LoRA adapters on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two different random LoRA adapters of the tiny model (PEFT format, as the trainer writes)."""
    from preftune.inference.tiny_adapter import build_random_adapter

    root = tmp_path_factory.mktemp("adapters")
    return [build_random_adapter(tiny_model_dir, root / f"adapter-{i}", seed=i) for i in range(2)]


@pytest.fixture
def models_home(preftune_home: Path, tiny_model_dir: Path) -> Path:
    """PREFTUNE_HOME whose models dir holds the tiny model as the base model `tiny-llama`."""
    target = preftune_home / "models" / "tiny-llama"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_model_dir, target)
    return preftune_home
