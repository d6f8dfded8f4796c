"""Continuous batching gives exactly the answers of one-request-at-a-time generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from helpers.generation import MAX_NEW, drain, reference, streamed_text, submit
from preftune.inference.batch import ModelWorker, WorkerConfig
from preftune.inference.types import Finished, SamplingParams

PROMPTS = [
    "hello there",
    "a much longer prompt that talks about many different things and goes on for a while",
    "x",
    "what is 2+2?",
    "tell me a story",
]


def test_batched_greedy_equals_single_request_generate(lively_model_dir: Path) -> None:
    # Small prefill chunks and staggered arrivals exercise chunked prefill and merging into a running batch.
    worker = ModelWorker(
        lively_model_dir, torch.device("cpu"), WorkerConfig(max_batch_size=3, prefill_chunk=8)
    )
    runs = []
    for i, text in enumerate(PROMPTS):
        runs.append(submit(worker, text))
        if i % 2:
            worker.step()
    assert worker.waiting, "more requests than batch slots: some must wait"
    drain(worker)
    eos = sorted(worker.eos_ids)
    # Answers that depend on the prompt: a batching bug (wrong KV row, position or mask) would show.
    assert len({tuple(seq.generated) for seq, _ in runs}) > 1
    for seq, events in runs:
        assert seq.generated == reference(worker.model, seq.prompt_ids, MAX_NEW, eos)
        final = events[-1]
        assert isinstance(final, Finished)
        assert final.prompt_tokens == len(seq.prompt_ids)
        assert final.completion_tokens == len(seq.generated)
        assert streamed_text(events) == worker.tokenizer.decode(seq.generated, skip_special_tokens=True)


def test_mixed_adapters_in_one_batch_equal_each_adapter_alone(
    lively_model_dir: Path, adapter_dirs: list[Path]
) -> None:
    # The adapters were made for the tiny model; the lively one has the same shapes.
    tiny_model_dir = lively_model_dir
    worker = ModelWorker(tiny_model_dir, torch.device("cpu"), WorkerConfig(max_batch_size=8))
    choices: list[Path | None] = [None, adapter_dirs[0], adapter_dirs[1], adapter_dirs[0], None]
    runs = [submit(worker, text, adapter=adapter) for text, adapter in zip(PROMPTS, choices, strict=True)]
    drain(worker)
    assert worker.adapters.loads == 2
    eos = sorted(worker.eos_ids)
    answers: dict[Path | None, list[list[int]]] = {}
    for (seq, _), adapter in zip(runs, choices, strict=True):
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        reference_model = base if adapter is None else PeftModel.from_pretrained(base, str(adapter))
        assert seq.generated == reference(reference_model, seq.prompt_ids, MAX_NEW, eos)
        answers.setdefault(adapter, []).append(seq.generated)
    # The same prompt answered by base and by an adapter differs: the adapter's weights are applied.
    assert runs[0][0].generated != reference(
        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter_dirs[0])
        ),
        runs[0][0].prompt_ids,
        MAX_NEW,
        eos,
    )


def test_adapter_lru_keeps_at_most_capacity(tiny_model_dir: Path, adapter_dirs: list[Path]) -> None:
    worker = ModelWorker(tiny_model_dir, torch.device("cpu"), WorkerConfig(adapter_cache_size=1))
    for adapter in [adapter_dirs[0], adapter_dirs[1], adapter_dirs[0]]:
        submit(worker, "hi", adapter=adapter, max_new=2)
        drain(worker)
        assert worker.adapters.loaded() == [adapter]
    assert worker.adapters.loads == 3


def test_bad_adapter_fails_only_its_request(tiny_model_dir: Path, tmp_path: Path) -> None:
    worker = ModelWorker(tiny_model_dir, torch.device("cpu"), WorkerConfig())
    _, good_events = submit(worker, "hi", max_new=3)
    _, bad_events = submit(worker, "hi", adapter=tmp_path, max_new=3)
    drain(worker)
    assert isinstance(bad_events[-1], Finished) and bad_events[-1].reason == "error"
    assert "adapter" in (bad_events[-1].error or "")
    assert isinstance(good_events[-1], Finished) and good_events[-1].reason == "length"


def test_seeded_sampling_does_not_depend_on_batch_neighbours(lively_model_dir: Path) -> None:
    # The lively model: a neighbour leaking into this sequence's KV would change what it samples from.
    worker = ModelWorker(lively_model_dir, torch.device("cpu"), WorkerConfig())
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    alone, _ = submit(worker, "hello there", params)
    drain(worker)
    crowd = [submit(worker, text, SamplingParams(temperature=1.0)) for text in PROMPTS[1:3]]
    again, _ = submit(worker, "hello there", params)
    crowd.append(submit(worker, PROMPTS[3], SamplingParams(temperature=0.7)))
    drain(worker)
    assert again.generated == alone.generated
    other, _ = submit(worker, "hello there", SamplingParams(temperature=1.0, top_p=0.9, seed=99))
    drain(worker)
    assert other.generated != alone.generated


def test_cancelled_sequence_stops_and_leaves_others_running(tiny_model_dir: Path) -> None:
    worker = ModelWorker(tiny_model_dir, torch.device("cpu"), WorkerConfig())
    doomed, doomed_events = submit(worker, "hi", max_new=500)
    kept, kept_events = submit(worker, "hello", max_new=20)
    for _ in range(3):
        worker.step()
    doomed.cancelled = True
    worker.step()
    assert doomed not in worker.running
    drain(worker)
    assert isinstance(doomed_events[-1], Finished) and doomed_events[-1].reason == "cancelled"
    assert len(doomed.generated) < 10
    assert isinstance(kept_events[-1], Finished) and kept_events[-1].completion_tokens == len(kept.generated)


@pytest.mark.parametrize("max_new", [1, 5])
def test_length_limit_is_exact(tiny_model_dir: Path, max_new: int) -> None:
    worker = ModelWorker(tiny_model_dir, torch.device("cpu"), WorkerConfig())
    # The random tiny model never says <|im_end|> this early, so only max_tokens stops it.
    seq, events = submit(worker, "hello", max_new=max_new)
    drain(worker)
    final = events[-1]
    assert isinstance(final, Finished) and final.reason == "length"
    assert final.completion_tokens == max_new == len(seq.generated)
