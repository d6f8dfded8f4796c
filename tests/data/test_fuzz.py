"""Property tests: whatever the bytes or JSON, the validator returns a report; it never raises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preftune.data import validate_file
from preftune.data.convert import SOURCES, convert_file

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "", None])
messages = st.lists(
    st.fixed_dictionaries({"role": roles, "content": st.text(max_size=8) | st.none()}), max_size=3
)
near_valid = st.fixed_dictionaries(
    {"input": st.fixed_dictionaries({"messages": messages}) | json_values},
    optional={
        "preferred_output": messages,
        "non_preferred_output": messages,
        "preferred_completion": messages,
        "extra": json_values,
    },
)


def _check(path: Path) -> None:
    report = validate_file(path, max_errors=5)
    assert report.ok == (report.n_errors_total == 0)
    assert len(report.errors) <= 5 + 3  # file-level problems are always listed
    json.dumps(report.to_dict())  # the report is JSON-able


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    _check(path)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_as_gzip_name(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.jsonl.gz"
    path.write_bytes(b"\x1f\x8b" + data)  # looks like gzip, mostly is not
    _check(path)


@FUZZ
@given(rows=st.lists(json_values | near_valid, min_size=0, max_size=6))
def test_random_json_rows(tmp_path: Path, rows: list[Any]) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _check(path)


@FUZZ
@given(
    rows=st.lists(json_values | near_valid, min_size=1, max_size=4), source=st.sampled_from(sorted(SOURCES))
)
def test_converters_never_crash_and_output_passes(tmp_path: Path, rows: list[Any], source: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    report = convert_file(src, out, source=source)
    assert report.n_written + report.n_dropped + report.n_problems_total == report.n_read
    check = validate_file(out)
    # Everything written is valid; only the count rule (at least 3) may fail on tiny inputs.
    assert {e.code for e in check.errors} <= {"too_few_examples", "empty_file"}


@FUZZ
@given(rows=st.lists(near_valid, min_size=1, max_size=6))
def test_iter_examples_agrees_with_validate_file(tmp_path: Path, rows: list[Any]) -> None:
    from preftune.data import iter_examples
    from preftune.errors import DataValidationError

    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_file(path)
    try:
        examples = list(iter_examples(path))
    except DataValidationError:
        assert report.n_valid < report.n_examples
    else:
        assert len(examples) == report.n_valid == report.n_examples


sft_rows = (
    st.fixed_dictionaries({"messages": messages})
    | st.fixed_dictionaries({"prompt": st.text(max_size=4), "completion": st.text(max_size=4)})
    | st.fixed_dictionaries({"text": st.text(max_size=4)})
)


@settings(max_examples=300, deadline=None)
@given(row=near_valid | sft_rows)
def test_fast_path_agrees_with_the_rules(row: dict[str, Any]) -> None:
    from preftune.data.fast import FAST_CHECKS
    from preftune.data.rows import check_row

    line = json.dumps(row).encode()
    result = check_row(row, 1)
    for fmt, fast in FAST_CHECKS.items():
        if fast(line) is not None:
            assert result.format == fmt and not result.errors, (fmt, result.errors)
    if result.format is not None and not result.errors:
        # ...and it does accept the valid rows (else every line would take the slow path).
        assert FAST_CHECKS[result.format](line) is not None
