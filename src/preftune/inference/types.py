"""The value types that cross the engine boundary: what to generate with, and what comes back.

Routes build a `ModelTarget` and `SamplingParams`, hand them with the chat messages to an
`InferenceEngine`, and read `StreamEvent`s back. Nothing here imports torch, so the API
layer can use these types without loading the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class ModelTarget:
    """A servable model: base weights, plus a LoRA adapter applied on top of them (or none).

    `name` is what callers asked for and what answers carry; `base_path` is a Hugging Face
    directory (a base model, or a merged fine-tune); `adapter_path` a PEFT adapter directory.
    """

    name: str
    base_path: Path
    adapter_path: Path | None = None

    @property
    def key(self) -> str:
        """Identity of the weights (two names pointing at the same files share one load)."""
        return f"{self.base_path}::{self.adapter_path or ''}"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings, already validated by the caller.

    `max_tokens=None` means "up to the model's context". `temperature=0` is greedy decoding.
    `seed` makes sampling reproducible for one request whatever else shares its batch.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks), as vLLM's option of that name


@dataclass(frozen=True)
class TextDelta:
    """New text of the answer (may be empty when a token completes no printable character)."""

    text: str
    n_tokens: int


@dataclass(frozen=True)
class Finished:
    """The last event of every generation."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


StreamEvent = TextDelta | Finished


@dataclass(frozen=True)
class Completion:
    """A whole answer, gathered from a stream (what a non-streaming request returns)."""

    text: str
    finish: Finished
