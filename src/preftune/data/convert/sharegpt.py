"""ShareGPT as LLaMA-Factory writes preference data: `conversations` + `chosen` + `rejected`.

Messages are `{"from": "system" | "human" | "gpt", "value": str}` (OpenAI-style `role` / `content`
is accepted too); an optional top-level `system` string becomes the first message.
"""

from __future__ import annotations

from typing import Any

from preftune.data.convert.common import ConversionProblem, need_object
from preftune.data.rows import show
from preftune.data.types import Message, PreferenceExample

ROLE_MAP = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _message(value: Any, field: str) -> Message:
    if not isinstance(value, dict):
        raise ConversionProblem(
            field, f"a message must be an object with from and value, got {show(value)}", "message_not_object"
        )
    speaker = value.get("from", value.get("role"))
    text = value.get("value", value.get("content"))
    if speaker not in ROLE_MAP:
        raise ConversionProblem(
            f"{field}.from",
            f'from must be "system", "human" or "gpt", got {show(speaker)} '
            "(tool and observation turns are not supported)",
            "invalid_role",
        )
    if not isinstance(text, str):
        raise ConversionProblem(f"{field}.value", f"value must be a string, got {show(text)}", "not_a_string")
    return {"role": ROLE_MAP[speaker], "content": text}


def _answer(value: Any, field: str) -> Message:
    if isinstance(value, list) and len(value) == 1:
        value, field = value[0], f"{field}[0]"
    message = _message(value, field)
    if message["role"] != "assistant":
        raise ConversionProblem(
            f"{field}.from", f'the answer must come from "gpt", got {message["role"]!r}', "invalid_role"
        )
    return message


def convert(record: Any) -> PreferenceExample:
    row = need_object(record)
    conversations = row.get("conversations")
    if not isinstance(conversations, list):
        raise ConversionProblem(
            "conversations",
            f"conversations must be a list of messages, got {show(conversations)}",
            "not_a_list",
        )
    context = [_message(m, f"conversations[{i}]") for i, m in enumerate(conversations)]
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        context.insert(0, {"role": "system", "content": system})
    for key in ("chosen", "rejected"):
        if key not in row:
            raise ConversionProblem(key, f"{key} is missing", "missing_field")
    return PreferenceExample(context, _answer(row["chosen"], "chosen"), _answer(row["rejected"], "rejected"))
