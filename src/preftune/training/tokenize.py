"""Tokenisation with the model's chat template, label masks and explicit, counted truncation.

A preference pair becomes three token lists that share nothing but a boundary: the prompt
(`input.messages` rendered with the generation prompt) and the two answers (the assistant turn
that follows, as the template renders it). If the template's tokens at the prompt/answer
boundary merge (the prompt's tokens are not a prefix of prompt+answer), the shared prompt is cut
back to the longest common prefix, so labels never go out of line with the text.

Truncation never happens silently: every cut is counted in `TruncationStats`, and an example
that cannot be trained on is returned as a `Skipped` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, Any]


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer this module uses."""

    eos_token_id: int | None

    def apply_chat_template(self, conversation: list[Message], **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


@dataclass
class PairTokens:
    """One preference pair: a shared prompt and two answers (the loss covers the answers only)."""

    index: int  # 1-based position of the example in its file
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    @property
    def length(self) -> int:
        """Tokens in the prefix-shared row `[prompt][chosen][rejected]`."""
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


@dataclass
class SFTTokens:
    """One SFT sequence; `labels[i]` says whether token i is a training target."""

    index: int
    ids: list[int]
    labels: list[bool]

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass
class Skipped:
    index: int
    reason: str


@dataclass
class TruncationStats:
    """What truncation did to a data set, for `train_report.json`."""

    prompts_truncated: int = 0
    answers_truncated: int = 0
    sequences_truncated: int = 0
    boundary_merges: int = 0
    prompt_tokens_dropped: int = 0
    answer_tokens_dropped: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self, max_listed: int = 100) -> dict[str, Any]:
        return {
            "prompts_truncated": self.prompts_truncated,
            "answers_truncated": self.answers_truncated,
            "sequences_truncated": self.sequences_truncated,
            "boundary_merges": self.boundary_merges,
            "prompt_tokens_dropped": self.prompt_tokens_dropped,
            "answer_tokens_dropped": self.answer_tokens_dropped,
            "skipped": len(self.skipped),
            "skipped_examples": [{"example": s.index, "reason": s.reason} for s in self.skipped[:max_listed]],
        }


def encode(tokenizer: ChatTokenizer, text: str) -> list[int]:
    # The chat template already writes every special token it wants; adding BOS again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render(tokenizer: ChatTokenizer, messages: list[Message], *, generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return encode(tokenizer, text)


def common_prefix_length(*sequences: list[int]) -> int:
    n = min(len(s) for s in sequences)
    first = sequences[0]
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return i
    return n


def tokenize_pair(
    tokenizer: ChatTokenizer,
    index: int,
    messages: list[Message],
    preferred: Message,
    non_preferred: Message,
    max_length: int,
    stats: TruncationStats,
) -> PairTokens | Skipped:
    """Render and truncate one pair so that prompt + the longer answer fits in `max_length` tokens.

    The prompt's start goes first (its end, next to the answer, matters most) but it keeps at least
    half of `max_length`; then the answers lose their ends.
    """
    prompt = render(tokenizer, messages, generation_prompt=True)
    full_chosen = render(tokenizer, [*messages, preferred], generation_prompt=False)
    full_rejected = render(tokenizer, [*messages, non_preferred], generation_prompt=False)
    shared = common_prefix_length(prompt, full_chosen, full_rejected)
    if shared < len(prompt):
        # Boundary tokens merged with the answer's first characters: the merged tokens move into
        # each answer so every label is the token that really follows its context.
        stats.boundary_merges += 1
    if shared == 0:
        return Skipped(index, "the chat template renders the prompt differently for the two answers")
    prompt = full_chosen[:shared]
    chosen = full_chosen[shared:]
    rejected = full_rejected[shared:]
    if not chosen or not rejected:
        return Skipped(index, "an answer renders to no tokens (empty or identical to the prompt)")

    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest > max_length:
        keep_prompt = max(min(len(prompt), max_length // 2), max_length - longest)
        if keep_prompt < len(prompt):
            stats.prompts_truncated += 1
            stats.prompt_tokens_dropped += len(prompt) - keep_prompt
            prompt = prompt[len(prompt) - keep_prompt :]
        room = max_length - len(prompt)
        if longest > room:
            stats.answers_truncated += 1
            stats.answer_tokens_dropped += max(0, len(chosen) - room) + max(0, len(rejected) - room)
            chosen, rejected = chosen[:room], rejected[:room]
    return PairTokens(index=index, prompt=prompt, chosen=chosen, rejected=rejected)


def _labelled(
    ids: list[int], mask: list[bool], index: int, max_length: int, stats: TruncationStats
) -> SFTTokens | Skipped:
    if len(ids) > max_length:
        # As for pairs: first drop the start of the context before the first target (keeping at least
        # half of max_length of it), then the end.
        first = next((i for i, keep in enumerate(mask) if keep), len(ids))
        drop = min(len(ids) - max_length, max(0, first - max_length // 2))
        stats.sequences_truncated += 1
        stats.prompt_tokens_dropped += drop
        stats.answer_tokens_dropped += len(ids) - drop - max_length
        ids, mask = ids[drop : drop + max_length], mask[drop : drop + max_length]
    # Token 0 has no context to be predicted from.
    mask = [False, *mask[1:]]
    if not any(mask):
        return Skipped(index, "no tokens to train on after truncation (raise max_length)")
    return SFTTokens(index=index, ids=ids, labels=mask)


def tokenize_sft_messages(
    tokenizer: ChatTokenizer,
    index: int,
    messages: list[Message],
    max_length: int,
    train_on_inputs: bool,
    stats: TruncationStats,
) -> SFTTokens | Skipped:
    """A conversation; targets are the assistant turns (or every token with `train_on_inputs`)."""
    ids = render(tokenizer, messages, generation_prompt=False)
    mask = [train_on_inputs] * len(ids)
    if not train_on_inputs:
        for turn, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before = render(tokenizer, messages[:turn], generation_prompt=True) if turn else []
            upto = render(tokenizer, messages[: turn + 1], generation_prompt=False)
            start = common_prefix_length(before, upto, ids)
            end = common_prefix_length(upto, ids)
            if start < len(before):
                stats.boundary_merges += 1
            for i in range(start, end):
                mask[i] = True
    return _labelled(ids, mask, index, max_length, stats)


def tokenize_sft_prompt_completion(
    tokenizer: ChatTokenizer,
    index: int,
    prompt: str,
    completion: str,
    max_length: int,
    train_on_inputs: bool,
    stats: TruncationStats,
) -> SFTTokens | Skipped:
    """Raw text (no chat template): the completion follows the prompt and ends with EOS."""
    prompt_ids = encode(tokenizer, prompt)
    ids = encode(tokenizer, prompt + completion)
    start = common_prefix_length(prompt_ids, ids)
    if start < len(prompt_ids):
        stats.boundary_merges += 1
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    mask = [train_on_inputs or i >= start for i in range(len(ids))]
    return _labelled(ids, mask, index, max_length, stats)


def tokenize_sft_text(
    tokenizer: ChatTokenizer, index: int, text: str, max_length: int, stats: TruncationStats
) -> SFTTokens | Skipped:
    """Plain text: every token is a target; EOS marks the end."""
    ids = encode(tokenizer, text)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return _labelled(ids, [True] * len(ids), index, max_length, stats)
