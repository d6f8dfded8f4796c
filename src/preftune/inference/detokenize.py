"""Turn a growing list of token ids into text deltas, honouring stop strings.

Decoding token by token breaks multi-byte characters and the tokenizer's spacing rules,
so the generated ids are decoded as a whole and only the new suffix is emitted. Text that
could still turn into a stop string (or ends in half a UTF-8 character) is held back until
it is known not to; a stop string itself is never emitted.
"""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"


class IncrementalText:
    """Per-request detokenizer: `push(token_id)` returns `(new_text, hit_stop)`."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already given out
        self.text = ""  # the answer so far (without any stop string)

    def push(self, token_id: int) -> tuple[str, bool]:
        self._ids.append(token_id)
        full = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        for stop in self._stop:
            cut = full.find(stop)
            if cut != -1:
                full = full[:cut]
                self.text = full
                delta = full[self._emitted :]
                self._emitted = len(full)
                return delta, True
        self.text = full
        if full.endswith(_REPLACEMENT):  # half a character: wait for the next token
            return "", False
        safe_end = len(full) - self._held_suffix(full)
        if safe_end <= self._emitted:
            return "", False
        delta = full[self._emitted : safe_end]
        self._emitted = safe_end
        return delta, False

    def _held_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that is the start of some stop string."""
        for n in range(min(self._holdback, len(text)), 0, -1):
            tail = text[-n:]
            if any(stop.startswith(tail) for stop in self._stop):
                return n
        return 0

    def flush(self) -> str:
        """Whatever was held back, at the end of generation."""
        delta = self.text[self._emitted :]
        self._emitted = len(self.text)
        return delta
