"""The shared real data beside the checkout (`../shared/data`, never edited) and small cuts of it.

`PREFTUNE_TEST_SHARED_DATA` points the tests at another copy (a CI cache, or a missing path to check
what happens without it)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from helpers.infra import require

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("PREFTUNE_TEST_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
# 284 real preference rows in preftune's own format.
ORCA_FILE = "orca_dpo_pairs/orca_dpo_pairs.jsonl"
ORCA = SHARED_DATA / ORCA_FILE


def require_shared(relative: str = "") -> Path:
    """`SHARED_DATA / relative`, or a skip (a failure under `CI=true`) when it is not there."""
    path = SHARED_DATA / relative
    require(
        path.exists(),
        f"shared data not found at {path} (the tests expect ../shared/data beside the checkout)",
    )
    return path


def first_lines(source: Path, dest: Path, n: int, offset: int = 0) -> Path:
    """Write lines `offset` to `offset + n` of a JSONL file to `dest` (a smaller real data set)."""
    lines = source.read_text(encoding="utf-8").splitlines()[offset : offset + n]
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def read_rows(source: Path, n: int, offset: int = 0) -> list[dict[str, Any]]:
    """Rows `offset` to `offset + n` of a JSONL file, parsed."""
    lines = source.read_text(encoding="utf-8").splitlines()[offset : offset + n]
    return [json.loads(line) for line in lines]


def write_rows(dest: Path, rows: list[dict[str, Any]]) -> Path:
    """Write `rows` to `dest` as JSONL."""
    dest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return dest
