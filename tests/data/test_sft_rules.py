"""SFT formats: `messages`, `prompt` + `completion`, `text`; their row rules and their canonical records."""

from __future__ import annotations

from typing import Any

import pytest

from preftune.data import SFTExample, iter_examples, validate_file


def conv(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


GOOD = conv(("system", "s"), ("user", "hi"), ("assistant", "hello"), ("user", "more"), ("assistant", "sure"))


@pytest.mark.parametrize(
    ("row", "field", "code"),
    [
        (conv(("user", "hi"), ("bot", "hello")), "messages[1].role", "invalid_role"),
        (conv(("user", "hi"), ("assistant", "")), "messages[1].content", "empty_content"),
        (conv(("user", "hi"), ("user", "again")), "messages", "no_assistant_message"),
        (conv(("user", "hi"), ("system", "s"), ("assistant", "a")), "messages[1].role", "misplaced_system"),
        ({"messages": []}, "messages", "empty_list"),
        ({**GOOD, "weight": 1}, "weight", "unknown_key"),
    ],
    ids=["role", "empty content", "no assistant", "late system", "empty", "unknown key"],
)
def test_messages_rules(row: dict[str, Any], field: str, code: str, write_jsonl: Any) -> None:
    report = validate_file(write_jsonl([GOOD, GOOD | {}, row, GOOD]))
    assert report.format == "sft_messages"
    assert [(e.line, e.field, e.code) for e in report.errors] == [(3, field, code)]


@pytest.mark.parametrize(
    ("row", "field", "code"),
    [
        ({"prompt": "p", "completion": ""}, "completion", "empty_content"),
        ({"prompt": " ", "completion": "c"}, "prompt", "empty_content"),
        ({"prompt": "p"}, "completion", "missing_field"),
        ({"prompt": "p", "completion": 1}, "completion", "not_a_string"),
        ({"prompt": "p", "completion": "c", "label": 1}, "label", "unknown_key"),
    ],
)
def test_prompt_completion_rules(row: dict[str, Any], field: str, code: str, write_jsonl: Any) -> None:
    good = {"prompt": "2+2=", "completion": "4"}
    report = validate_file(write_jsonl([good, row, good, good]))
    assert report.format == "sft_prompt_completion"
    assert [(e.line, e.field, e.code) for e in report.errors] == [(2, field, code)]


@pytest.mark.parametrize(("row", "code"), [({"text": ""}, "empty_content"), ({"text": None}, "not_a_string")])
def test_text_rules(row: dict[str, Any], code: str, write_jsonl: Any) -> None:
    report = validate_file(write_jsonl([{"text": "a"}, {"text": "b"}, {"text": "c"}, row]))
    assert report.format == "sft_text"
    assert [(e.line, e.field, e.code) for e in report.errors] == [(4, "text", code)]


def test_sft_formats_normalise_to_messages(write_jsonl: Any) -> None:
    messages = list(iter_examples(write_jsonl([GOOD] * 3, name="m.jsonl")))
    assert messages[0] == SFTExample(GOOD["messages"], False, "sft_messages", 1)
    pc = list(iter_examples(write_jsonl([{"prompt": "2+2=", "completion": "4"}] * 3, name="pc.jsonl")))
    assert pc[2].messages == [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    assert pc[2].source_format == "sft_prompt_completion" and not pc[2].from_text and pc[2].line == 3
    text = list(iter_examples(write_jsonl([{"text": "Once upon a time."}] * 3, name="t.jsonl")))
    assert text[0].from_text and text[0].messages == [{"role": "assistant", "content": "Once upon a time."}]
