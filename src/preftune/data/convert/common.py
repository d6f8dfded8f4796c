"""What every converter shares: the problem it raises, the drop it returns, message helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from preftune.data.rows import show
from preftune.data.types import Message


class ConversionProblem(Exception):
    """A record that cannot be converted faithfully; reported with its position, never written."""

    def __init__(self, field: str | None, message: str, code: str = "cannot_convert") -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Dropped:
    """A record left out on purpose (not an error), counted by reason: e.g. a tie in UltraFeedback."""

    reason: str


def need_object(record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ConversionProblem(None, f"a record must be a JSON object, got {show(record)}", "not_an_object")
    return record


def need_str(record: dict[str, Any], key: str) -> str:
    if key not in record:
        raise ConversionProblem(key, f"{key} is missing", "missing_field")
    value = record[key]
    if not isinstance(value, str):
        raise ConversionProblem(key, f"{key} must be a string, got {show(value)}", "not_a_string")
    return value


def role_content_messages(value: Any, field: str) -> list[Message]:
    """A list of `{"role", "content"}` messages (other keys are left out)."""
    if not isinstance(value, list):
        raise ConversionProblem(field, f"{field} must be a list of messages, got {show(value)}", "not_a_list")
    messages: list[Message] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise ConversionProblem(
                f"{field}[{i}]",
                "each message must be an object with a role and a content",
                "message_not_object",
            )
        content = item.get("content")
        if not isinstance(content, str):
            raise ConversionProblem(
                f"{field}[{i}].content", f"content must be a string, got {show(content)}", "not_a_string"
            )
        messages.append({"role": item["role"], "content": content})
    return messages


def split_shared_prefix(
    chosen: list[Message], rejected: list[Message], chosen_field: str, rejected_field: str
) -> tuple[list[Message], Message, Message]:
    """Two whole conversations that differ only in their last assistant turn -> (context, answer, answer)."""
    if not chosen or not rejected:
        raise ConversionProblem(
            chosen_field if not chosen else rejected_field, "the conversation is empty", "empty_list"
        )
    for field, conv in ((chosen_field, chosen), (rejected_field, rejected)):
        if conv[-1]["role"] != "assistant":
            raise ConversionProblem(
                f"{field}[{len(conv) - 1}]",
                "the conversation must end with the assistant's answer",
                "no_final_answer",
            )
    if chosen[:-1] != rejected[:-1]:
        turn = next(
            (i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b),
            min(len(chosen), len(rejected)) - 1,
        )
        raise ConversionProblem(
            f"{rejected_field}[{turn}]",
            f"the two conversations differ before their last turn (first at turn {turn + 1}), so there is no "
            "shared context to compare the answers in; fix or drop the record",
            "prefix_mismatch",
        )
    return chosen[:-1], chosen[-1], rejected[-1]
