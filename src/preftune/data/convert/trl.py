"""TRL's preference formats: `prompt` / `chosen` / `rejected`, standard (strings) or conversational (messages).

- strings: the prompt becomes one user message, the answers assistant messages;
- conversational: `prompt` is the context, `chosen` / `rejected` hold the assistant answer;
- implicit prompt (no `prompt`, whole conversations in `chosen` / `rejected`): the shared turns
  become the context, as TRL's `extract_prompt` does.
"""

from __future__ import annotations

from typing import Any

from preftune.data.convert.common import (
    ConversionProblem,
    need_object,
    role_content_messages,
    split_shared_prefix,
)
from preftune.data.rows import show
from preftune.data.types import Message, PreferenceExample


def _answer(value: Any, field: str) -> Message:
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    messages = role_content_messages(value, field)
    if len(messages) != 1:
        raise ConversionProblem(
            field,
            f"{field} must hold one assistant message after the prompt, it holds {len(messages)}",
            "wrong_answer_count",
        )
    return messages[0]


def convert(record: Any) -> PreferenceExample:
    row = need_object(record)
    for key in ("chosen", "rejected"):
        if key not in row:
            raise ConversionProblem(key, f"{key} is missing", "missing_field")
    prompt = row.get("prompt")
    if prompt is None:
        if isinstance(row["chosen"], str) or isinstance(row["rejected"], str):
            raise ConversionProblem(
                "prompt",
                "without a prompt, chosen and rejected must be whole conversations "
                "(lists of messages); for HH-RLHF transcripts use --from hh-rlhf",
                "missing_field",
            )
        chosen = role_content_messages(row["chosen"], "chosen")
        rejected = role_content_messages(row["rejected"], "rejected")
        shared, preferred, non_preferred = split_shared_prefix(chosen, rejected, "chosen", "rejected")
        return PreferenceExample(shared, preferred, non_preferred)
    if isinstance(prompt, str):
        context: list[Message] = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        context = role_content_messages(prompt, "prompt")
    else:
        raise ConversionProblem(
            "prompt", f"prompt must be a string or a list of messages, got {show(prompt)}", "not_a_string"
        )
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list) and (len(chosen) > 1 or len(rejected) > 1):
        # Some exports repeat the prompt inside chosen/rejected (whole conversations): it must match.
        shared, preferred, non_preferred = split_shared_prefix(
            role_content_messages(chosen, "chosen"),
            role_content_messages(rejected, "rejected"),
            "chosen",
            "rejected",
        )
        if shared != context:
            raise ConversionProblem(
                "chosen",
                "chosen and rejected hold whole conversations that do not start with "
                "the prompt; give either the prompt and the answers, or whole conversations",
                "prefix_mismatch",
            )
        return PreferenceExample(shared, preferred, non_preferred)
    return PreferenceExample(context, _answer(chosen, "chosen"), _answer(rejected, "rejected"))
