"""Small real data files for the trainer tests (cut from the shared Orca DPO pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _orca_rows(orca_path: Path, n: int, offset: int = 0) -> list[dict]:  # type: ignore[type-arg]
    lines = orca_path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[offset : offset + n]]


def _write(path: Path, rows: list[dict]) -> Path:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pairs_file(orca_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 preference pairs."""
    return _write(tmp_path_factory.mktemp("data") / "pairs.jsonl", _orca_rows(orca_path, 16))


@pytest.fixture(scope="session")
def eval_pairs_file(orca_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 other preference pairs for evaluation."""
    return _write(tmp_path_factory.mktemp("data") / "eval.jsonl", _orca_rows(orca_path, 6, offset=100))


@pytest.fixture(scope="session")
def sft_file(orca_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SFT conversations: each Orca prompt followed by its preferred answer."""
    rows = [
        {"messages": [*row["input"]["messages"], *row["preferred_output"]]}
        for row in _orca_rows(orca_path, 8)
    ]
    return _write(tmp_path_factory.mktemp("data") / "sft.jsonl", rows)
