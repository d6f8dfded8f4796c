"""Token statistics: the summary arithmetic, and lengths measured with a real tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from preftune.data import PreferenceExample, SFTExample
from preftune.data.token_stats import TokenStats, collect, measure, summarize


def test_summarize_by_hand() -> None:
    # 20 values 1..20: median (10+11)/2, nearest-rank p95 = the 19th value.
    assert summarize(list(range(20, 0, -1))) == {"min": 1, "median": 10.5, "p95": 19, "max": 20, "mean": 10.5}
    assert summarize([7]) == {"min": 7, "median": 7, "p95": 7, "max": 7, "mean": 7.0}
    assert summarize([])["median"] is None


def test_truncation_counts_prompt_plus_longer_answer() -> None:
    stats = TokenStats(max_length=100)
    stats.add_preference(60, 40, 10)  # 100: fits exactly
    stats.add_preference(60, 10, 41)  # 101: the longer answer decides
    stats.add_sequence(101)
    assert stats.truncated == 2 and stats.to_dict()["n_examples"] == 3


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_measure_matches_the_chat_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    pair = PreferenceExample(
        messages,
        {"role": "assistant", "content": "Paris."},
        {"role": "assistant", "content": "It is Lyon, I believe, but I am not sure."},
    )
    prompt, preferred, non_preferred = measure(tokenizer, pair)
    rendered_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, pair.preferred], tokenize=False)
    assert full.startswith(rendered_prompt)
    assert prompt == len(tokenizer(rendered_prompt, add_special_tokens=False)["input_ids"])
    assert prompt + preferred == len(tokenizer(full, add_special_tokens=False)["input_ids"])
    assert non_preferred > preferred > 0

    text = SFTExample([{"role": "assistant", "content": "Once upon a time"}], True, "sft_text")
    assert measure(tokenizer, text) == (
        len(tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]) + 1,
    )


def test_collect_reports_truncation(tokenizer) -> None:  # type: ignore[no-untyped-def]
    short = PreferenceExample(
        [{"role": "user", "content": "Hi"}],
        {"role": "assistant", "content": "Hello."},
        {"role": "assistant", "content": "Go away."},
    )
    long = PreferenceExample(
        [{"role": "user", "content": "Tell me a story. " * 20}],
        {"role": "assistant", "content": "Once upon a time. " * 20},
        {"role": "assistant", "content": "No."},
    )
    lengths = measure(tokenizer, long)
    limit = lengths[0] + lengths[1] - 1  # one token short of the long pair
    result = collect(tokenizer, [short, long, short], limit, "tiny").to_dict()
    assert result["truncated"] == 1 and result["n_examples"] == 3 and result["model"] == "tiny"
    assert result["prompt"]["max"] == lengths[0] and set(result) >= {"preferred", "non_preferred"}


def test_histogram_bins_by_hand() -> None:
    from preftune.data.token_stats import histogram

    # max 39 -> 40 values 0..39 in 20 bins of width 2: 0-1, 2-3, ..., 38-39.
    result = histogram([0, 1, 2, 39, 39, 10], bins=20)
    assert result["edges"][:3] == [0, 2, 4] and result["edges"][-1] == 40
    assert len(result["counts"]) == 20 and sum(result["counts"]) == 6
    assert result["counts"][0] == 2 and result["counts"][1] == 1 and result["counts"][5] == 1
    assert result["counts"][-1] == 2
    assert histogram([]) == {"edges": [], "counts": []}
    assert histogram([5, 5]) == {"edges": [0, 1, 2, 3, 4, 5, 6], "counts": [0, 0, 0, 0, 0, 2]}
