"""UltraFeedback (binarized): `prompt`, `chosen` / `rejected` as whole conversations, `score_chosen` / `score_rejected`.

Pairs whose two scores are equal carry no preference: they are dropped and counted, not trained on.
"""

from __future__ import annotations

from typing import Any

from preftune.data.convert.common import (
    ConversionProblem,
    Dropped,
    need_object,
    role_content_messages,
    split_shared_prefix,
)
from preftune.data.types import Message, PreferenceExample

TIE = "tie (score_chosen equals score_rejected)"


def convert(record: Any) -> PreferenceExample | Dropped:
    row = need_object(record)
    for key in ("chosen", "rejected"):
        if key not in row:
            raise ConversionProblem(key, f"{key} is missing", "missing_field")
    scores = row.get("score_chosen"), row.get("score_rejected")
    if all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores) and scores[0] == scores[1]:
        return Dropped(TIE)
    chosen = role_content_messages(row["chosen"], "chosen")
    rejected = role_content_messages(row["rejected"], "rejected")
    prompt = row.get("prompt")
    if isinstance(prompt, str) and len(chosen) == 1 and len(rejected) == 1:
        # Some exports keep only the answers in chosen/rejected.
        context: list[Message] = [{"role": "user", "content": prompt}]
        return PreferenceExample(context, chosen[0], rejected[0])
    context, preferred, non_preferred = split_shared_prefix(chosen, rejected, "chosen", "rejected")
    return PreferenceExample(context, preferred, non_preferred)
