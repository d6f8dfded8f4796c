"""The interface every inference engine offers the routes.

The routes only know `InferenceEngine`: the embedded default (`LocalEngine`: transformers +
PEFT, continuous batching in a background thread) implements it, and a GPU engine (e.g. vLLM
with multi-LoRA serving) can implement it too without any route changing.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from preftune.inference.types import Completion, Finished, ModelTarget, SamplingParams, StreamEvent, TextDelta


@dataclass(frozen=True)
class LoadedModel:
    """A base model held in memory, and the adapters currently loaded on it."""

    base_path: Path
    pinned: bool  # held by a deployment (never evicted)
    adapters: tuple[Path, ...]
    context_length: int


class Generation(abc.ABC):
    """One answer being generated: read its events, or cancel it."""

    prompt_tokens: int

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop generating (the client went away); the stream then ends with a `cancelled` finish."""

    async def collect(self) -> Completion:
        """Read the whole answer (cancels the generation if the caller is itself cancelled)."""
        parts: list[str] = []
        try:
            async for event in self:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, Finished):
                    return Completion("".join(parts), event)
        finally:
            self.cancel()
        raise RuntimeError("generation ended without a finish event")


class InferenceEngine(abc.ABC):
    """Generates chat answers for base models and LoRA fine-tunes of them."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """Finish every request with an error and release the models."""

    @abc.abstractmethod
    async def load(self, target: ModelTarget, *, pin_as: str | None = None) -> LoadedModel:
        """Bring a model (and its adapter) into memory; `pin_as` (a deployment id) keeps it there."""

    @abc.abstractmethod
    async def unpin(self, target: ModelTarget, holder: str) -> None:
        """Drop a deployment's hold; the model may then be unloaded when idle."""

    @abc.abstractmethod
    def is_loaded(self, target: ModelTarget) -> bool: ...

    @abc.abstractmethod
    def loaded(self) -> list[LoadedModel]: ...

    @abc.abstractmethod
    async def generate(
        self, target: ModelTarget, messages: list[dict[str, str]], params: SamplingParams
    ) -> Generation:
        """Validate and queue a request; raises `InvalidRequestError` (prompt or max_tokens too long)
        before anything is generated. The model must be loaded (see `load`)."""
