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

_UNSET = msgspec.UNSET
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: Literal["system", "user", "assistant"]
    content: NonEmpty


class _Answer(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: Literal["assistant"]
    content: NonEmpty


Conversation = Annotated[list[_Message], msgspec.Meta(min_length=1)]
OneAnswer = Annotated[list[_Answer], msgspec.Meta(min_length=1, max_length=1)]


class _Input(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    messages: Conversation


class _Preference(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    input: _Input
    preferred_output: OneAnswer | msgspec.UnsetType = msgspec.UNSET
    non_preferred_output: OneAnswer | msgspec.UnsetType = msgspec.UNSET
    preferred_completion: OneAnswer | msgspec.UnsetType = msgspec.UNSET
    non_preferred_completion: OneAnswer | msgspec.UnsetType = msgspec.UNSET


class _SFTMessages(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    messages: Conversation


class _SFTPromptCompletion(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    prompt: NonEmpty
    completion: NonEmpty


class _SFTText(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    text: NonEmpty


# What a fast check returns for a valid row: the two answers' texts for preference rows (the
# warnings compare them), an empty tuple for SFT rows; None sends the row to the slow path.
FastResult = tuple[str, ...] | None

_pref_decode = msgspec.json.Decoder(_Preference).decode
_messages_decoder = msgspec.json.Decoder(_SFTMessages)
_pc_decoder = msgspec.json.Decoder(_SFTPromptCompletion)
_text_decoder = msgspec.json.Decoder(_SFTText)


def _conversation_ok(messages: list[_Message], *, is_input: bool) -> bool:
    first = messages[0]
    if first.content.isspace():
        return False
    has_assistant = first.role == "assistant"
    if len(messages) == 1:
        # A lone system message is neither an input (no user turn) nor a conversation to learn.
        return first.role == "user" if is_input else has_assistant
    for m in messages[1:]:
        role = m.role
        if role == "system" or m.content.isspace():
            return False
        if role == "assistant":
            has_assistant = True
    return messages[-1].role != "assistant" if is_input else has_assistant


def _answers_by_alias(row: _Preference) -> FastResult:
    """The rare rows that use `preferred_completion` / `non_preferred_completion` (or lack an answer)."""
    p, p_alias = row.preferred_output, row.preferred_completion
    n, n_alias = row.non_preferred_output, row.non_preferred_completion
    if (p is _UNSET) == (p_alias is _UNSET) or (n is _UNSET) == (n_alias is _UNSET):
        return None  # an answer is missing, or given under both names
    preferred: str = (p_alias if p is _UNSET else p)[0].content  # type: ignore[index]
    non_preferred: str = (n_alias if n is _UNSET else n)[0].content  # type: ignore[index]
    if preferred.isspace() or non_preferred.isspace():
        return None
    return (preferred, non_preferred)


def check_preference(line: bytes) -> FastResult:
    # Written for speed: this runs once per line of files of up to 3M lines.
    try:
        row = _pref_decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    messages = row.input.messages
    # The input ends on a user turn (not the assistant's; a trailing system message is misplaced),
    # and a system message may only come first.
    if messages[-1].role != "user":
        return None
    if len(messages) > 2:
        for m in messages[1:-1]:
            if m.role == "system":
                return None
    for m in messages:
        if m.content.isspace():
            return None
    p, n = row.preferred_output, row.non_preferred_output
    if (
        p is _UNSET
        or n is _UNSET
        or row.preferred_completion is not _UNSET
        or row.non_preferred_completion is not _UNSET
    ):
        return _answers_by_alias(row)
    preferred: str = p[0].content  # type: ignore[index]
    non_preferred: str = n[0].content  # type: ignore[index]
    if preferred.isspace() or non_preferred.isspace():
        return None
    return (preferred, non_preferred)


def check_sft_messages(line: bytes) -> FastResult:
    try:
        row = _messages_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return () if _conversation_ok(row.messages, is_input=False) else None


def check_sft_prompt_completion(line: bytes) -> FastResult:
    try:
        row = _pc_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return None if row.prompt.isspace() or row.completion.isspace() else ()


def check_sft_text(line: bytes) -> FastResult:
    try:
        row = _text_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return None if row.text.isspace() else ()


FAST_CHECKS: dict[Format, Callable[[bytes], FastResult]] = {
    "preference": check_preference,
    "sft_messages": check_sft_messages,
    "sft_prompt_completion": check_sft_prompt_completion,
    "sft_text": check_sft_text,
}
