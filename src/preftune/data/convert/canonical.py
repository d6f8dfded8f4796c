"""preftune's own preference format as a conversion source (for `--to sft`): rows are checked, not changed."""

from __future__ import annotations

from typing import Any

from preftune.data.convert.common import ConversionProblem
from preftune.data.rows import check_row
from preftune.data.types import PreferenceExample


def convert(record: Any) -> PreferenceExample:
    result = check_row(record, 0, "preference")
    if result.format != "preference":
        raise ConversionProblem(
            None,
            "this record is not preftune preference data (input, preferred_output, "
            "non_preferred_output); pick its format with --from",
            "unknown_format",
        )
    if result.errors:
        field, message, code = result.errors[0]
        raise ConversionProblem(field, message, code)
    assert isinstance(result.example, PreferenceExample)
    return result.example
