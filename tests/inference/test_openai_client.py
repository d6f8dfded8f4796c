"""The official `openai` client, unchanged, against the real server: base and fine-tuned models,
plain and streaming, usage counts, errors.

The server runs the lively model, whose answers depend on the prompt: these tests compare answers
(streamed and not, base and adapter, merged and adapter), which a model answering everything alike
would let a mix-up pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from transformers import AutoTokenizer

from preftune.inference.prompts import render_prompt

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours."},
]


@pytest.fixture(scope="session")
def client(lively_server: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{lively_server.base_url}/v1", api_key=lively_server.api_key, max_retries=0
    )


@pytest.fixture(scope="session")
def tuned(lively_server: Any, adapter_dirs: list[Path]) -> str:
    # The adapters were made for the tiny model; the lively one has the same shapes.
    return str(lively_server.register_fine_tune(adapter_dirs[0], suffix="colours"))


def _ask(client: openai.OpenAI, model: str, messages: list[Any] = MESSAGES, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, **kwargs
    )


def _stream_text(client: openai.OpenAI, model: str) -> tuple[str, str | None, Any]:
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(parts), finish, usage


def test_base_model_plain_and_streaming_agree_with_correct_usage(
    client: openai.OpenAI, lively_model_dir: Path
) -> None:
    answer = _ask(client, "tiny-llama")
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == "tiny-llama"
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    tokenizer = AutoTokenizer.from_pretrained(str(lively_model_dir))
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == len(render_prompt(tokenizer, MESSAGES))
    assert answer.usage.completion_tokens == 8
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8
    text, finish, usage = _stream_text(client, "tiny-llama")
    assert text == choice.message.content
    assert finish == "length"
    # Another question gets another answer: the agreement above is not one answer for everything.
    other = _ask(client, "tiny-llama", [{"role": "user", "content": "Count to ten."}])
    assert other.choices[0].message.content != text
    assert (
        usage is not None
        and usage.completion_tokens == 8
        and usage.prompt_tokens == answer.usage.prompt_tokens
    )


def test_fine_tuned_adapter_answers_differently_from_its_base(client: openai.OpenAI, tuned: str) -> None:
    base = _ask(client, "tiny-llama").choices[0].message.content
    answer = _ask(client, tuned)
    assert answer.model == tuned
    assert answer.choices[0].message.content != base
    text, finish, _ = _stream_text(client, tuned)
    assert text == answer.choices[0].message.content and finish == "length"


def test_merged_model_answers_like_its_adapter(
    client: openai.OpenAI,
    lively_server: Any,
    lively_model_dir: Path,
    adapter_dirs: list[Path],
    tmp_path: Path,
) -> None:
    """What `download --artifact merged` gives (a plain transformers model) loads and answers
    exactly like the adapter on its base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = tmp_path / "merged"
    base = AutoModelForCausalLM.from_pretrained(str(lively_model_dir), dtype=torch.float32)
    PeftModel.from_pretrained(base, str(adapter_dirs[1])).merge_and_unload().save_pretrained(str(merged_dir))
    AutoTokenizer.from_pretrained(str(lively_model_dir)).save_pretrained(str(merged_dir))
    merged_name = lively_server.register_fine_tune(None, merged=merged_dir, suffix="merged")
    adapter_name = lively_server.register_fine_tune(adapter_dirs[1], suffix="adapter")
    merged = _ask(client, merged_name).choices[0].message.content
    assert merged == _ask(client, adapter_name).choices[0].message.content
    # Not the base model's answer: the merge really carries the adapter.
    assert merged != _ask(client, "tiny-llama").choices[0].message.content


def test_n_and_seed_give_reproducible_distinct_samples(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, max_tokens=6, temperature=1.0, n=3, seed=7
    )
    again = client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, max_tokens=6, temperature=1.0, n=3, seed=7
    )
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1
    assert first.usage is not None and first.usage.completion_tokens == 18


def test_stop_string_ends_the_answer_without_it(client: openai.OpenAI) -> None:
    full = _ask(client, "tiny-llama").choices[0].message.content or ""
    assert len(full) > 3
    stop = full[2:4]
    cut = _ask(client, "tiny-llama", stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.find(stop)]


def test_models_list_and_retrieve(client: openai.OpenAI, tuned: str) -> None:
    ids = [m.id for m in client.models.list()]
    assert "tiny-llama" in ids and tuned in ids
    assert client.models.retrieve(tuned).id == tuned


def test_errors_are_openai_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        _ask(client, "ft:tiny-llama:none:ftjob-000")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "tool", "content": "x"}])  # type: ignore[list-item,misc]
    assert "role" in str(info.value)
