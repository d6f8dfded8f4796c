"""The fast path: typed msgspec decoders that accept valid rows without building Python dicts.

A row that decodes into these structs and passes the few cross-field checks below is valid by
the rules of `rows.py`. Anything else (a decode error, a failed check) returns None and the
caller re-checks the row with `rows.check_row`, which names every problem. So this module may be
stricter than `rows.py`, never looser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import msgspec

from preftune.data.types import Format

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _Message(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "user", "assistant"]
    content: NonEmpty


class _Answer(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["assistant"]
    content: NonEmpty


Conversation = Annotated[list[_Message], msgspec.Meta(min_length=1)]
OneAnswer = Annotated[list[_Answer], msgspec.Meta(min_length=1, max_length=1)]


class _Input(msgspec.Struct, forbid_unknown_fields=True):
    messages: Conversation


class _Preference(msgspec.Struct, forbid_unknown_fields=True):
    input: _Input
    preferred_output: OneAnswer | msgspec.UnsetType = msgspec.UNSET
    non_preferred_output: OneAnswer | msgspec.UnsetType = msgspec.UNSET
    preferred_completion: OneAnswer | msgspec.UnsetType = msgspec.UNSET
    non_preferred_completion: OneAnswer | msgspec.UnsetType = msgspec.UNSET


class _SFTMessages(msgspec.Struct, forbid_unknown_fields=True):
    messages: Conversation


class _SFTPromptCompletion(msgspec.Struct, forbid_unknown_fields=True):
    prompt: NonEmpty
    completion: NonEmpty


class _SFTText(msgspec.Struct, forbid_unknown_fields=True):
    text: NonEmpty


# What a fast check returns for a valid row: the two answers' texts for preference rows (the
# warnings compare them), an empty tuple for SFT rows; None sends the row to the slow path.
FastResult = tuple[str, ...] | None

_pref_decoder = msgspec.json.Decoder(_Preference)
_messages_decoder = msgspec.json.Decoder(_SFTMessages)
_pc_decoder = msgspec.json.Decoder(_SFTPromptCompletion)
_text_decoder = msgspec.json.Decoder(_SFTText)


def _conversation_ok(messages: list[_Message], *, is_input: bool) -> bool:
    has_assistant = False
    for i, m in enumerate(messages):
        if m.content.isspace() or (i and m.role == "system"):
            return False
        has_assistant = has_assistant or m.role == "assistant"
    if messages[0].role == "system" and len(messages) == 1:
        return False
    return messages[-1].role != "assistant" if is_input else has_assistant


def _one(primary: list[_Answer] | msgspec.UnsetType, alias: list[_Answer] | msgspec.UnsetType) -> str | None:
    if primary is msgspec.UNSET:
        if alias is msgspec.UNSET:
            return None
        answers = alias
    elif alias is not msgspec.UNSET:
        return None
    else:
        answers = primary
    assert isinstance(answers, list)
    content = answers[0].content
    return None if content.isspace() else content


def check_preference(line: bytes) -> FastResult:
    try:
        row = _pref_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not _conversation_ok(row.input.messages, is_input=True):
        return None
    preferred = _one(row.preferred_output, row.preferred_completion)
    non_preferred = _one(row.non_preferred_output, row.non_preferred_completion)
    if preferred is None or non_preferred is None:
        return None
    return (preferred, non_preferred)


def check_sft_messages(line: bytes) -> FastResult:
    try:
        row = _messages_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return () if _conversation_ok(row.messages, is_input=False) else None


def check_sft_prompt_completion(line: bytes) -> FastResult:
    try:
        row = _pc_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return None if row.prompt.isspace() or row.completion.isspace() else ()


def check_sft_text(line: bytes) -> FastResult:
    try:
        row = _text_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return None if row.text.isspace() else ()


FAST_CHECKS: dict[Format, Callable[[bytes], FastResult]] = {
    "preference": check_preference,
    "sft_messages": check_sft_messages,
    "sft_prompt_completion": check_sft_prompt_completion,
    "sft_text": check_sft_text,
}
