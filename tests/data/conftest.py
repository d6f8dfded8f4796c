"""Fixtures for the data layer's tests: valid rows and a writer for JSONL files."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

GOOD_ROW: dict[str, Any] = {
    "input": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
        ]
    },
    "preferred_output": [{"role": "assistant", "content": "Paris."}],
    "non_preferred_output": [{"role": "assistant", "content": "Lyon, I think."}],
}


def good_row(i: int = 0) -> dict[str, Any]:
    row = copy.deepcopy(GOOD_ROW)
    row["input"]["messages"][1]["content"] = f"Question {i}: capital of France?"
    return row


@pytest.fixture
def good() -> Callable[[int], dict[str, Any]]:
    """`good(i)`: a valid preference row, distinct for each i."""
    return good_row


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """`write_jsonl(rows, name="data.jsonl")`: rows are dicts (dumped as JSON) or raw str/bytes lines."""

    def write(rows: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        with open(path, "wb") as f:
            for row in rows:
                if isinstance(row, bytes):
                    f.write(row + b"\n")
                elif isinstance(row, str):
                    f.write(row.encode() + b"\n")
                else:
                    f.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        return path

    return write
