"""The row rules: classify one decoded JSON row into a format and check it field by field.

This is the single source of truth for what a valid row is and for every error message about a
row. It works on plain decoded JSON (dicts, lists, strings) so it can describe anything a user
may write; `fast.py` only speeds up the rows that pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from preftune.data.types import Example, Format, Message, PreferenceExample, SFTExample

ROLES = ("system", "user", "assistant")
PREFERENCE_KEYS = frozenset(
    {"input", "preferred_output", "non_preferred_output", "preferred_completion", "non_preferred_completion"}
)
ALIASES = {"preferred_output": "preferred_completion", "non_preferred_output": "non_preferred_completion"}
SFT_KEYS: dict[str, frozenset[str]] = {
    "sft_messages": frozenset({"messages"}),
    "sft_prompt_completion": frozenset({"prompt", "completion"}),
    "sft_text": frozenset({"text"}),
}
MESSAGE_KEYS = frozenset({"role", "content"})


@dataclass
class RowResult:
    """The outcome of checking one row: its format, its problems, and the example when valid."""

    format: Format | None
    errors: list[tuple[str | None, str, str]] = field(default_factory=list)  # (field, message, code)
    example: Example | None = None

    def error(self, path: str | None, message: str, code: str) -> None:
        self.errors.append((path, message, code))


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages a person can read."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def show(value: Any, limit: int = 40) -> str:
    """A short quoted rendering of a value for an error message."""
    if isinstance(value, str):
        text = value if len(value) <= limit else value[: limit - 3] + "..."
        return '"' + text.replace("\n", "\\n") + '"'
    return json_type(value)


def foreign_format_hint(keys: set[str], row: dict[str, Any]) -> str | None:
    """If a row looks like another public preference format, say which converter to use."""
    if "conversations" in keys:
        name = "ShareGPT / LLaMA-Factory"
        source = "sharegpt"
    elif {"question", "response_j", "response_k"} <= keys:
        name, source = "Stack Exchange paired", "stack-exchange"
    elif {"chosen", "rejected"} <= keys and ({"score_chosen", "score_rejected"} & keys):
        name, source = "UltraFeedback", "ultrafeedback"
    elif {"chosen", "rejected"} <= keys and "prompt" in keys:
        name, source = "TRL prompt/chosen/rejected", "trl"
    elif {"chosen", "rejected"} <= keys:
        chosen = row.get("chosen")
        if isinstance(chosen, str) and "Human:" in chosen[:200]:
            name, source = "Anthropic HH-RLHF", "hh-rlhf"
        else:
            name, source = "TRL chosen/rejected", "trl"
    else:
        return None
    return (
        f"this row looks like {name} data, which preftune does not guess at: convert the file with "
        f"`preftune data convert --from {source} IN OUT`"
    )


def classify(row: dict[str, Any]) -> Format | None:
    """The format a row is written in, judged from its keys (None when it matches none)."""
    keys = row.keys()
    if any(k in PREFERENCE_KEYS for k in keys):
        return "preference"
    if "chosen" in keys or "rejected" in keys or "conversations" in keys:
        return None
    if "messages" in keys:
        return "sft_messages"
    if "prompt" in keys or "completion" in keys:
        return "sft_prompt_completion"
    if "text" in keys:
        return "sft_text"
    return None


def check_text(result: RowResult, value: Any, path: str, what: str) -> str | None:
    """A non-empty string (not only whitespace)."""
    if not isinstance(value, str):
        result.error(path, f"{what} must be a string, got {show(value)}", "not_a_string")
        return None
    if not value or value.isspace():
        result.error(
            path, f"{what} is {'empty' if not value else 'only whitespace'}; write the text", "empty_content"
        )
        return None
    return value


def check_message(
    result: RowResult, value: Any, path: str, *, assistant_only: bool = False
) -> Message | None:
    if not isinstance(value, dict):
        result.error(
            path,
            f"each message must be an object with role and content, got {show(value)}",
            "message_not_object",
        )
        return None
    ok = True
    for key in value:
        if key not in MESSAGE_KEYS:
            result.error(
                f"{path}.{key}",
                f"unknown key {show(key)}: a message has only role and content",
                "unknown_key",
            )
            ok = False
    role = value.get("role")
    if "role" not in value:
        expected = '"assistant"' if assistant_only else "system, user or assistant"
        result.error(f"{path}.role", f"role is missing; set it to {expected}", "missing_field")
        ok = False
    elif assistant_only and role != "assistant":
        result.error(f"{path}.role", f'role must be "assistant", got {show(role)}', "invalid_role")
        ok = False
    elif role not in ROLES:
        result.error(
            f"{path}.role", f'role must be "system", "user" or "assistant", got {show(role)}', "invalid_role"
        )
        ok = False
    if "content" not in value:
        result.error(f"{path}.content", "content is missing; write the message's text", "missing_field")
        ok = False
    elif check_text(result, value["content"], f"{path}.content", "content") is None:
        ok = False
    return {"role": str(role), "content": value["content"]} if ok else None


def check_conversation(result: RowResult, value: Any, path: str, *, is_input: bool) -> list[Message] | None:
    """A list of messages: roles known, system only first; an input ends on a non-assistant turn."""
    if not isinstance(value, list):
        result.error(path, f"{path} must be a list of messages, got {show(value)}", "not_a_list")
        return None
    if not value:
        need = "the conversation before the answers (at least one user message)" if is_input else "messages"
        result.error(path, f"{path} is empty; it must hold {need}", "empty_list")
        return None
    messages: list[Message] = []
    ok = True
    for i, item in enumerate(value):
        message = check_message(result, item, f"{path}[{i}]")
        if message is None:
            ok = False
            continue
        if message["role"] == "system" and i > 0:
            result.error(
                f"{path}[{i}].role",
                f"a system message may only come first; this is message {i + 1}",
                "misplaced_system",
            )
            ok = False
        messages.append(message)
    if not ok:
        return None
    if is_input and messages[-1]["role"] == "assistant":
        result.error(
            f"{path}[{len(messages) - 1}].role",
            "the last input message is the assistant's; the input must end on the user's turn "
            "(the answers are preferred_output and non_preferred_output)",
            "input_ends_with_assistant",
        )
        return None
    if not is_input and not any(m["role"] == "assistant" for m in messages):
        result.error(
            path, "there is no assistant message to train on; add at least one", "no_assistant_message"
        )
        return None
    if messages[0]["role"] == "system" and len(messages) == 1:
        what = "the input" if is_input else "the conversation"
        result.error(path, f"{what} holds only a system message; add the user's turn", "only_system")
        return None
    return messages


def check_answer(result: RowResult, row: dict[str, Any], name: str) -> Message | None:
    """`preferred_output` (or its alias `preferred_completion`): a list of exactly one assistant message."""
    alias = ALIASES[name]
    if name in row and alias in row:
        result.error(alias, f"give {name} or its alias {alias}, not both", "duplicate_field")
        return None
    key = alias if alias in row else name
    if key not in row:
        result.error(name, f"{name} is missing; add a list with one assistant message", "missing_field")
        return None
    value = row[key]
    if not isinstance(value, list):
        result.error(key, f"{key} must be a list with one assistant message, got {show(value)}", "not_a_list")
        return None
    if len(value) != 1:
        result.error(
            key, f"{key} must hold exactly one assistant message, it holds {len(value)}", "wrong_answer_count"
        )
        return None
    return check_message(result, value[0], f"{key}[0]", assistant_only=True)


def check_preference(result: RowResult, row: dict[str, Any], line: int) -> None:
    for key in row:
        if key not in PREFERENCE_KEYS:
            result.error(
                key,
                f"unknown key {show(key)}; a preference row has input, preferred_output and "
                "non_preferred_output",
                "unknown_key",
            )
    messages: list[Message] | None = None
    if "input" not in row:
        result.error(
            "input", 'input is missing; add {"messages": [...]} with the conversation', "missing_field"
        )
    elif not isinstance(row["input"], dict):
        result.error(
            "input",
            f'input must be an object {{"messages": [...]}}, got {show(row["input"])}',
            "not_an_object",
        )
    else:
        inp = row["input"]
        for key in inp:
            if key != "messages":
                result.error(
                    f"input.{key}", f"unknown key {show(key)}; input holds only messages", "unknown_key"
                )
        if "messages" not in inp:
            result.error("input.messages", "input.messages is missing; add the conversation", "missing_field")
        else:
            messages = check_conversation(result, inp["messages"], "input.messages", is_input=True)
    preferred = check_answer(result, row, "preferred_output")
    non_preferred = check_answer(result, row, "non_preferred_output")
    if not result.errors and messages is not None and preferred is not None and non_preferred is not None:
        result.example = PreferenceExample(messages, preferred, non_preferred, line)


def check_sft(result: RowResult, row: dict[str, Any], fmt: Format, line: int) -> None:
    allowed = SFT_KEYS[fmt]
    for key in row:
        if key not in allowed:
            names = " and ".join(sorted(allowed))
            result.error(
                key, f"unknown key {show(key)}; a row of this format has only {names}", "unknown_key"
            )
    for key in sorted(allowed):
        if key not in row:
            result.error(key, f"{key} is missing", "missing_field")
    if result.errors:
        return
    if fmt == "sft_messages":
        messages = check_conversation(result, row["messages"], "messages", is_input=False)
        if messages is not None:
            result.example = SFTExample(messages, False, "sft_messages", line)
    elif fmt == "sft_prompt_completion":
        prompt = check_text(result, row["prompt"], "prompt", "prompt")
        completion = check_text(result, row["completion"], "completion", "completion")
        if prompt is not None and completion is not None:
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            result.example = SFTExample(msgs, False, "sft_prompt_completion", line)
    else:
        text = check_text(result, row["text"], "text", "text")
        if text is not None:
            result.example = SFTExample([{"role": "assistant", "content": text}], True, "sft_text", line)


def check_row(row: Any, line: int, expected: Format | None = None) -> RowResult:
    """Check one decoded row. With `expected`, a row of another format is one `mixed_formats` error."""
    if not isinstance(row, dict):
        return RowResult(
            None, [(None, f"each line must be one JSON object, got {json_type(row)}", "not_an_object")]
        )
    fmt = classify(row)
    result = RowResult(fmt)
    if fmt is None:
        hint = foreign_format_hint(set(row), row)
        keys = ", ".join(sorted(row)[:8]) or "none"
        message = hint or (
            "this row matches no format: preference rows have input, preferred_output and non_preferred_output; "
            f"SFT rows have messages, prompt + completion, or text. Its keys are: {keys}"
        )
        result.error(None, message, "unknown_format")
        return result
    if expected is not None and fmt != expected:
        return result  # the caller reports the mix, naming both lines
    if fmt == "preference":
        check_preference(result, row, line)
    else:
        check_sft(result, row, fmt, line)
    return result
