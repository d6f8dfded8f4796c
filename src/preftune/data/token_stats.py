"""Token-length statistics of a data set, computed the way the trainer tokenises (pure Python).

The caller passes a tokenizer (anything with Hugging Face's `apply_chat_template` and `__call__`),
so this module imports nothing heavy and the CLI and the service can share it. A preference
prompt is `input.messages` rendered with the generation prompt; an answer is the tokens the
assistant turn adds after it (the prefix shared by both full renderings is the prompt, as in the
trainer's prefix sharing). An example is truncated when prompt + its longer answer exceeds
`max_length` (SFT: when the whole sequence does).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from preftune.data.types import Example, Message, PreferenceExample


class ChatTokenizer(Protocol):
    eos_token_id: int | None

    def apply_chat_template(self, conversation: list[Message], **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


def summarize(lengths: Sequence[int]) -> dict[str, float | int | None]:
    """min, median, p95 (nearest rank), max and mean of a list of lengths (None values when empty)."""
    if not lengths:
        return {"min": None, "median": None, "p95": None, "max": None, "mean": None}
    ordered = sorted(lengths)
    n = len(ordered)
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {
        "min": ordered[0],
        "median": median,
        "p95": ordered[max(0, math.ceil(0.95 * n) - 1)],
        "max": ordered[-1],
        "mean": round(sum(ordered) / n, 1),
    }


HISTOGRAM_BINS = 20


def histogram(lengths: Sequence[int], bins: int = HISTOGRAM_BINS) -> dict[str, list[int]]:
    """Counts of lengths in `bins` equal-width integer bins from 0 to the maximum.

    `edges` has one more entry than `counts`; bin i holds edges[i] <= length < edges[i+1]
    (the last bin also holds the maximum). Integer edges, so a label reads as whole tokens.
    """
    if not lengths:
        return {"edges": [], "counts": []}
    top = max(lengths)
    width = max(1, math.ceil((top + 1) / bins))
    n_bins = max(1, math.ceil((top + 1) / width))
    counts = [0] * n_bins
    for length in lengths:
        counts[min(length // width, n_bins - 1)] += 1
    return {"edges": [i * width for i in range(n_bins + 1)], "counts": counts}


def _part(lengths: Sequence[int]) -> dict[str, Any]:
    return {**summarize(lengths), "histogram": histogram(lengths)}


class TokenStats:
    """Collects per-example token lengths; `to_dict()` gives the report's `token_stats`."""

    def __init__(self, max_length: int, model: str | None = None) -> None:
        self.max_length = max_length
        self.model = model
        self.prompt = array("L")
        self.preferred = array("L")
        self.non_preferred = array("L")
        self.sequence = array("L")
        self.truncated = 0

    def add_preference(self, prompt: int, preferred: int, non_preferred: int) -> None:
        self.prompt.append(prompt)
        self.preferred.append(preferred)
        self.non_preferred.append(non_preferred)
        if prompt + max(preferred, non_preferred) > self.max_length:
            self.truncated += 1

    def add_sequence(self, length: int) -> None:
        self.sequence.append(length)
        if length > self.max_length:
            self.truncated += 1

    @property
    def n_examples(self) -> int:
        return len(self.prompt) + len(self.sequence)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "max_length": self.max_length,
            "n_examples": self.n_examples,
            "truncated": self.truncated,
        }
        if self.prompt:
            out["prompt"] = _part(self.prompt)
            out["preferred"] = _part(self.preferred)
            out["non_preferred"] = _part(self.non_preferred)
        if self.sequence:
            out["sequence"] = _part(self.sequence)
        return out


def _encode(tokenizer: ChatTokenizer, text: str) -> list[int]:
    # The chat template writes every special token it wants; adding BOS again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer: ChatTokenizer, messages: list[Message], *, generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return _encode(tokenizer, text)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def measure(tokenizer: ChatTokenizer, example: Example) -> tuple[int, ...]:
    """(prompt, preferred, non_preferred) token counts of a pair, or (sequence,) of an SFT example."""
    if isinstance(example, PreferenceExample):
        prompt = _render(tokenizer, example.messages, generation_prompt=True)
        chosen = _render(tokenizer, [*example.messages, example.preferred], generation_prompt=False)
        rejected = _render(tokenizer, [*example.messages, example.non_preferred], generation_prompt=False)
        shared = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
        return shared, len(chosen) - shared, len(rejected) - shared
    if example.source_format == "sft_messages":
        return (len(_render(tokenizer, example.messages, generation_prompt=False)),)
    # Plain prompt + completion and text rows are raw text (no chat template), ended by EOS.
    eos = 0 if tokenizer.eos_token_id is None else 1
    return (len(_encode(tokenizer, "".join(m["content"] for m in example.messages))) + eos,)


def collect(
    tokenizer: ChatTokenizer, examples: Iterable[Example], max_length: int, model: str | None = None
) -> TokenStats:
    stats = TokenStats(max_length, model)
    for example in examples:
        lengths = measure(tokenizer, example)
        if len(lengths) == 3:
            stats.add_preference(*lengths)
        else:
            stats.add_sequence(lengths[0])
    return stats
