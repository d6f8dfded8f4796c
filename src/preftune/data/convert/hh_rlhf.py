"""Anthropic HH-RLHF: `{"chosen": str, "rejected": str}`, each a whole "\\n\\nHuman: / \\n\\nAssistant:" transcript.

The shared turns become `input.messages`; the differing last assistant turns the two answers. A
record whose transcripts differ before the last turn is reported, not patched up.
"""

from __future__ import annotations

import re
from typing import Any

from preftune.data.convert.common import ConversionProblem, need_object, need_str, split_shared_prefix
from preftune.data.types import Message, PreferenceExample

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(text: str, field: str) -> list[Message]:
    """`\\n\\nHuman: hi\\n\\nAssistant: hello` -> [user: hi, assistant: hello] (turn text stripped)."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ConversionProblem(
            field,
            f'the transcript must start with "\\n\\nHuman:"; it starts with {parts[0].strip()[:30]!r}',
            "bad_transcript",
        )
    if len(parts) < 3:
        raise ConversionProblem(field, 'no "\\n\\nHuman:" / "\\n\\nAssistant:" turns found', "bad_transcript")
    return [{"role": _ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def convert(record: Any) -> PreferenceExample:
    row = need_object(record)
    chosen = parse_transcript(need_str(row, "chosen"), "chosen")
    rejected = parse_transcript(need_str(row, "rejected"), "rejected")
    context, preferred, non_preferred = split_shared_prefix(chosen, rejected, "chosen", "rejected")
    for field, answer in (("chosen", preferred), ("rejected", non_preferred)):
        if not answer["content"]:
            raise ConversionProblem(
                field,
                f"the last Assistant turn of {field} is empty, so there is no answer to compare",
                "empty_answer",
            )
    return PreferenceExample(context, preferred, non_preferred)
