"""Small real data files for the trainer tests (cut from the shared Orca DPO pairs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.data import read_rows, write_rows


@pytest.fixture(scope="session")
def pairs_file(orca_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 preference pairs."""
    return write_rows(tmp_path_factory.mktemp("data") / "pairs.jsonl", read_rows(orca_path, 16))


@pytest.fixture(scope="session")
def eval_pairs_file(orca_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 other preference pairs for evaluation."""
    return write_rows(tmp_path_factory.mktemp("data") / "eval.jsonl", read_rows(orca_path, 6, offset=100))


@pytest.fixture(scope="session")
def sft_file(orca_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SFT conversations: each Orca prompt followed by its preferred answer."""
    rows = [
        {"messages": [*row["input"]["messages"], *row["preferred_output"]]} for row in read_rows(orca_path, 8)
    ]
    return write_rows(tmp_path_factory.mktemp("data") / "sft.jsonl", rows)
