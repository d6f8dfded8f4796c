"""Stack Exchange paired (lvwerra/stack-exchange-paired): `question`, `response_j` (preferred), `response_k`."""

from __future__ import annotations

from typing import Any

from preftune.data.convert.common import need_object, need_str
from preftune.data.types import PreferenceExample


def convert(record: Any) -> PreferenceExample:
    row = need_object(record)
    question = need_str(row, "question")
    return PreferenceExample(
        [{"role": "user", "content": question}],
        {"role": "assistant", "content": need_str(row, "response_j")},
        {"role": "assistant", "content": need_str(row, "response_k")},
    )
