"""Prompt rendering, role checks and incremental detokenisation with stop strings (real tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from preftune.errors import InvalidRequestError
from preftune.inference.detokenize import IncrementalText
from preftune.inference.local import check_lengths
from preftune.inference.prompts import end_of_turn_ids, normalize_messages, render_prompt


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _stream(tokenizer: Any, text: str, stop: tuple[str, ...]) -> tuple[list[str], str, bool]:
    detok = IncrementalText(tokenizer, stop)
    deltas, stopped = [], False
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        delta, stopped = detok.push(token)
        deltas.append(delta)
        if stopped:
            break
    deltas.append(detok.flush())
    return deltas, detok.text, stopped


def test_deltas_rebuild_the_text_including_multibyte_characters(tokenizer: Any) -> None:
    text = "Crème brûlée 🍮 costs 5€, naïve café."
    deltas, full, stopped = _stream(tokenizer, text, ())
    assert "".join(deltas) == full == text and not stopped
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_is_never_emitted_even_across_tokens(tokenizer: Any) -> None:
    deltas, full, stopped = _stream(tokenizer, "The answer is 42. END of story", ("END of",))
    assert stopped
    assert "".join(deltas) == full == "The answer is 42. "
    assert all("END" not in d for d in deltas)


def test_held_back_prefix_is_released_when_it_is_not_a_stop(tokenizer: Any) -> None:
    deltas, full, stopped = _stream(tokenizer, "an ENDIVE salad", ("END of",))
    assert not stopped and "".join(deltas) == full == "an ENDIVE salad"


def test_template_renders_the_generation_prompt_and_end_of_turn_is_known(tokenizer: Any) -> None:
    ids = render_prompt(tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 3  # system, user, and the assistant turn to be written
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in end_of_turn_ids(tokenizer, None)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "messages[1].role"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0]"),
        (["hello"], "messages[0]"),
    ],
)
def test_bad_messages_name_the_field(messages: list[Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        normalize_messages(messages)
    assert info.value.param == param


def test_text_parts_and_developer_role_are_accepted() -> None:
    out = normalize_messages(
        [
            {"role": "developer", "content": "be kind"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ]
    )
    assert out == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]


def test_lengths_against_the_context() -> None:
    assert check_lengths(100, None, 2048) == 1948
    assert check_lengths(100, 1948, 2048) == 1948
    with pytest.raises(InvalidRequestError, match="at most 1948") as info:
        check_lengths(100, 1949, 2048)
    assert info.value.param == "max_tokens"
    with pytest.raises(InvalidRequestError) as info:
        check_lengths(2048, None, 2048)
    assert info.value.param == "messages"
