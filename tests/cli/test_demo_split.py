"""The demo's split: seeded, disjoint, and the held-out pairs never among the ones trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from preftune.cli.demo import split_pairs


def test_the_demo_trains_and_judges_on_disjoint_pairs(orca_path: Path, tmp_path: Path) -> None:
    train, held = split_pairs(orca_path, 128, 64, tmp_path / "a")
    train_lines = train.read_text().splitlines()
    held_lines = held.read_text().splitlines()
    assert len(train_lines) == 128 and len(held_lines) == 64
    assert not set(train_lines) & set(held_lines)
    again, _ = split_pairs(orca_path, 200, 84, tmp_path / "b")
    assert again.read_text().splitlines()[:128] == train_lines  # the same seeded order
    with pytest.raises(typer.BadParameter):
        split_pairs(orca_path, 250, 84, tmp_path / "c")
