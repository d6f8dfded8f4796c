"""Driving an inference `ModelWorker` by hand: submit a chat prompt, step until every sequence ends,
and the answer plain `generate` gives (what batching and prefix caching must reproduce exactly)."""

from __future__ import annotations

from pathlib import Path

import torch

from preftune.inference.batch import ModelWorker, Sequence
from preftune.inference.prompts import render_prompt
from preftune.inference.types import SamplingParams, StreamEvent, TextDelta

GREEDY = SamplingParams(temperature=0.0)
# Tokens a test answer has unless the test says otherwise.
MAX_NEW = 12


def chat_prompt(worker: ModelWorker, text: str) -> list[int]:
    """`text` as one user message through the model's chat template."""
    return render_prompt(worker.tokenizer, [{"role": "user", "content": text}])


def submit(
    worker: ModelWorker,
    text: str,
    params: SamplingParams = GREEDY,
    adapter: Path | None = None,
    max_new: int = MAX_NEW,
) -> tuple[Sequence, list[StreamEvent]]:
    """Queue one chat request; its stream events are collected in the returned list."""
    events: list[StreamEvent] = []
    seq = worker.new_sequence(chat_prompt(worker, text), params, max_new, adapter, events.append)
    worker.submit(seq)
    return seq, events


def drain(worker: ModelWorker) -> None:
    """Step the worker until it has nothing left to do (bounded, so a hang fails the test)."""
    for _ in range(10_000):
        if not worker.has_work():
            return
        worker.step()
    raise AssertionError("worker never finished")


def reference(model: torch.nn.Module, prompt: list[int], max_new: int, eos: list[int]) -> list[int]:
    """Greedy tokens of plain `generate` on the prompt alone: the answer with no batching or caching."""
    out = model.generate(  # type: ignore[operator]
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos[0],
    )
    return list(out[0, len(prompt) :].tolist())


def streamed_text(events: list[StreamEvent]) -> str:
    """The text a client would have received from the stream."""
    return "".join(e.text for e in events if isinstance(e, TextDelta))
