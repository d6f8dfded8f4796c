"""`iter_examples`: canonical records for the trainer, and a clear error for a row that breaks a rule."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from preftune.data import PreferenceExample, iter_examples
from preftune.errors import DataValidationError


def test_preference_records(good: Callable[[int], dict[str, Any]], write_jsonl: Any) -> None:
    row = good(2)
    row["preferred_completion"] = row.pop("preferred_output")  # the alias reads the same
    examples = list(iter_examples(write_jsonl([good(1), row, good(3)])))
    assert [e.line for e in examples] == [1, 2, 3]
    second = examples[1]
    assert isinstance(second, PreferenceExample)
    assert second.messages == row["input"]["messages"]
    assert second.preferred == {"role": "assistant", "content": "Paris."}
    assert second.non_preferred == {"role": "assistant", "content": "Lyon, I think."}


def test_bad_row_raises_naming_line_and_field(
    good: Callable[[int], dict[str, Any]], write_jsonl: Any
) -> None:
    bad = good(2)
    bad["non_preferred_output"][0]["role"] = "user"
    with pytest.raises(DataValidationError) as info:
        list(iter_examples(write_jsonl([good(1), bad])))
    assert "line 2" in info.value.message and info.value.param == "non_preferred_output[0].role"


def test_mixed_formats_raise(good: Callable[[int], dict[str, Any]], write_jsonl: Any) -> None:
    with pytest.raises(DataValidationError, match="line 2"):
        list(iter_examples(write_jsonl([good(1), {"text": "x"}])))


def test_orca_records(orca_path: Path) -> None:
    examples = list(iter_examples(orca_path))
    assert len(examples) == 284
    first = json.loads(orca_path.read_text().splitlines()[0])
    assert examples[0].messages == first["input"]["messages"]


def test_small_read_blocks_and_no_final_newline(
    monkeypatch: pytest.MonkeyPatch, good: Callable[[int], dict[str, Any]], write_jsonl: Any
) -> None:
    from preftune.data import reader

    path = write_jsonl([good(1), good(2), good(3)])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    expected = list(iter_examples(path))
    monkeypatch.setattr(reader, "READ_BUFFER", 5)
    assert list(iter_examples(path)) == expected and [e.line for e in expected] == [1, 2, 3]
