"""Chat-template tokenisation: loss only on answers, aligned labels, explicit and counted truncation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from preftune.training.tokenize import (
    PairTokens,
    SFTTokens,
    Skipped,
    TruncationStats,
    tokenize_pair,
    tokenize_sft_messages,
    tokenize_sft_prompt_completion,
    tokenize_sft_text,
)

USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
GOOD = {"role": "assistant", "content": "4"}
BAD = {"role": "assistant", "content": "It is five, I think."}


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_pair_is_prompt_with_generation_prompt_and_assistant_turns(tok: Any) -> None:
    stats = TruncationStats()
    pair = tokenize_pair(tok, 1, USER, GOOD, BAD, 512, stats)
    assert isinstance(pair, PairTokens)
    prompt_text = tok.decode(pair.prompt)
    assert prompt_text.endswith("<|im_start|>assistant\n")
    assert "What is 2+2?" in prompt_text
    assert tok.decode(pair.chosen) == "4<|im_end|>\n"
    assert tok.decode(pair.rejected) == "It is five, I think.<|im_end|>\n"
    full = tok.apply_chat_template([*USER, GOOD], tokenize=False)
    assert tok.decode(pair.prompt + pair.chosen) == full
    assert stats.boundary_merges == 0 and stats.prompts_truncated == 0


class MergingTokenizer:
    """Characters are tokens, except that "\\nA" is one token: the prompt "...\\n" is then not a
    token prefix of "...\\nAnswer", the case the trainer must not mislabel."""

    eos_token_id = 0

    def apply_chat_template(
        self, conversation: list[dict[str, str]], *, tokenize: bool, add_generation_prompt: bool
    ) -> str:
        text = "".join(f"{m['role']}:\n{m['content']}\n" for m in conversation)
        return text + ("assistant:\n" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids, i = [], 0
        while i < len(text):
            if text.startswith("\nA", i):
                ids.append(1000)
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return {"input_ids": ids}


def test_boundary_merge_moves_merged_tokens_into_the_answers() -> None:
    tokenizer = MergingTokenizer()
    stats = TruncationStats()
    messages = [{"role": "user", "content": "q"}]
    # The generation prompt ends "assistant:\n"; an answer starting with "A" merges with that "\n".
    chosen = {"role": "assistant", "content": "Ayes"}
    rejected = {"role": "assistant", "content": "Ano"}
    pair = tokenize_pair(tokenizer, 1, messages, chosen, rejected, 512, stats)
    assert isinstance(pair, PairTokens)
    assert stats.boundary_merges == 1
    full_chosen = tokenizer(
        tokenizer.apply_chat_template([*messages, chosen], tokenize=False, add_generation_prompt=False)
    )["input_ids"]
    full_rejected = tokenizer(
        tokenizer.apply_chat_template([*messages, rejected], tokenize=False, add_generation_prompt=False)
    )["input_ids"]
    # Every label is the token that really follows its context in the rendered conversation.
    assert pair.prompt + pair.chosen == full_chosen
    assert pair.prompt + pair.rejected == full_rejected
    assert pair.chosen[0] == 1000 and pair.rejected[0] == 1000


def test_truncation_drops_prompt_start_first_then_answer_ends(tok: Any) -> None:
    long_user = [{"role": "user", "content": " ".join(f"word{i}" for i in range(200))}]
    stats = TruncationStats()
    pair = tokenize_pair(tok, 3, long_user, GOOD, BAD, 64, stats)
    assert isinstance(pair, PairTokens)
    assert len(pair.prompt) + max(len(pair.chosen), len(pair.rejected)) == 64
    assert stats.prompts_truncated == 1 and stats.answers_truncated == 0
    assert tok.decode(pair.prompt).endswith("<|im_start|>assistant\n"), "the prompt keeps its end"
    assert tok.decode(pair.rejected) == "It is five, I think.<|im_end|>\n", "answers untouched"

    long_answer = {"role": "assistant", "content": " ".join(["yes"] * 300)}
    pair = tokenize_pair(tok, 4, long_user, long_answer, BAD, 64, stats)
    assert isinstance(pair, PairTokens)
    assert len(pair.prompt) == 32, "the prompt keeps at least half of max_length"
    assert len(pair.chosen) == 32 and len(pair.rejected) < 32
    assert stats.prompts_truncated == 2 and stats.answers_truncated == 1
    assert stats.answer_tokens_dropped > 0


def test_sft_messages_targets_only_assistant_turns(tok: Any) -> None:
    convo = [*USER, GOOD, {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]
    out = tokenize_sft_messages(tok, 1, convo, 512, False, TruncationStats())
    assert isinstance(out, SFTTokens)
    targets = [t for t, keep in zip(out.ids, out.labels, strict=True) if keep]
    assert tok.decode(targets) == "4<|im_end|>\n6<|im_end|>\n"
    everything = tokenize_sft_messages(tok, 1, convo, 512, True, TruncationStats())
    assert isinstance(everything, SFTTokens)
    assert sum(everything.labels) == len(everything.ids) - 1


def test_sft_prompt_completion_and_text(tok: Any) -> None:
    stats = TruncationStats()
    out = tokenize_sft_prompt_completion(tok, 1, "Translate: chat ->", " cat", 512, False, stats)
    assert isinstance(out, SFTTokens)
    targets = [t for t, keep in zip(out.ids, out.labels, strict=True) if keep]
    assert targets[-1] == tok.eos_token_id
    assert tok.decode(targets[:-1]).strip() == "cat"
    text = tokenize_sft_text(tok, 2, "hello world " * 100, 16, stats)
    assert isinstance(text, SFTTokens) and len(text.ids) == 16 and stats.sequences_truncated == 1


def test_sft_truncation_keeps_the_answer_and_skips_examples_without_targets(tok: Any) -> None:
    stats = TruncationStats()
    long_prompt = [{"role": "user", "content": "x " * 300}, GOOD]
    out = tokenize_sft_messages(tok, 7, long_prompt, 32, False, stats)
    assert isinstance(out, SFTTokens) and len(out.ids) == 32
    targets = [t for t, keep in zip(out.ids, out.labels, strict=True) if keep]
    assert tok.decode(targets) == "4<|im_end|>\n", "the context's start went, the answer stayed"
    assert stats.sequences_truncated == 1 and stats.prompt_tokens_dropped > 0
    skipped = tokenize_sft_messages(tok, 8, USER, 512, False, stats)
    assert isinstance(skipped, Skipped) and skipped.index == 8
