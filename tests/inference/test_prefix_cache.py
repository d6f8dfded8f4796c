"""Prefill: automatic prefix caching (exact reuse of prompt-prefix KV, per base model and per adapter,
bounded) and bursts (prefilled together, in groups bounded by a token budget)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from helpers.generation import MAX_NEW, chat_prompt, drain, reference, streamed_text, submit
from preftune.inference.batch import ModelWorker, WorkerConfig
from preftune.inference.prefix_cache import PrefixCache
from preftune.inference.types import Finished


def _kv(tokens: int, fill: float = 0.0) -> torch.Tensor:
    """A fake KV of `tokens` tokens: (layers=2, k/v, heads=1, tokens, dim=4), position-coded."""
    return (
        torch.arange(tokens, dtype=torch.float32).view(1, 1, 1, tokens, 1).expand(2, 2, 1, tokens, 4) + fill
    )


def test_lookup_returns_the_longest_cached_whole_blocks_within_the_limit() -> None:
    cache = PrefixCache(block_size=4, capacity_bytes=1 << 20)
    tokens = list(range(100, 111))  # 11 tokens: 2 full blocks
    cache.insert("base", tokens, _kv(8))
    assert len(cache) == 2
    n, kv = cache.lookup("base", [*tokens[:9], 999], limit=9)
    assert n == 8 and kv is not None and torch.equal(kv, _kv(8))
    assert cache.lookup("base", tokens, limit=7)[0] == 4  # the limit keeps the last prompt token uncached
    assert (
        cache.lookup("base", [100, 101, 102, 7, 104, 105, 106, 107], limit=8)[0] == 0
    )  # first block differs
    assert cache.lookup("other", tokens, limit=10) == (0, None)  # another namespace never sees these blocks
    assert cache.stats.hits == 2 and cache.stats.hit_tokens == 12


def test_a_block_is_found_only_after_the_same_beginning() -> None:
    cache = PrefixCache(block_size=2, capacity_bytes=1 << 20)
    cache.insert("base", [1, 2, 3, 4], _kv(4))
    # Same second block after a different first block: a different prefix, so no hit at all.
    assert cache.cached_length("base", [9, 9, 3, 4, 5], limit=4) == 0
    assert cache.cached_length("base", [1, 2, 3, 4, 5], limit=4) == 4


def test_memory_is_bounded_and_least_recently_used_chains_go_first() -> None:
    block_bytes = _kv(2).numel() * 4
    cache = PrefixCache(block_size=2, capacity_bytes=5 * block_bytes)
    cache.insert("base", [1, 2, 3, 4], _kv(4))  # chain A: 2 blocks
    cache.insert("base", [5, 6, 7, 8], _kv(4))  # chain B: 2 blocks
    assert cache.lookup("base", [1, 2, 3, 4, 0], limit=4)[0] == 4  # A is now the most recent
    cache.insert("base", [9, 10, 11, 12], _kv(4))  # chain C: needs room for one more block
    assert cache.bytes <= cache.capacity_bytes and len(cache) == 5
    # B's tail went first (a chain's tail is always older than its head), A and C are whole.
    assert cache.cached_length("base", [5, 6, 7, 8, 0], limit=4) == 2
    assert cache.cached_length("base", [1, 2, 3, 4, 0], limit=4) == 4
    assert cache.cached_length("base", [9, 10, 11, 12, 0], limit=4) == 4
    assert PrefixCache(block_size=2, capacity_bytes=0).lookup("base", [1, 2, 3], limit=2) == (0, None)


def test_cache_hits_give_exactly_the_answers_of_a_cold_prefill(lively_model_dir: Path) -> None:
    worker = ModelWorker(lively_model_dir, torch.device("cpu"), WorkerConfig(prefix_block_size=4))
    cold = ModelWorker(lively_model_dir, torch.device("cpu"), WorkerConfig(prefix_cache_mb=0))
    first, _ = submit(worker, "hello there")
    drain(worker)
    assert worker.prefix_cache.stats.hits == 0 and len(worker.prefix_cache) > 0
    # The chat template's system prompt is shared by every prompt; the same question again shares all of it.
    texts = ["what is 2+2?", "hello there", "a much longer prompt that talks about many different things"]
    runs = [submit(worker, text) for text in texts]
    drain(worker)
    stats = worker.prefix_cache.stats
    common = next(
        i for i, (a, b) in enumerate(zip(first.prompt_ids, runs[0][0].prompt_ids, strict=False)) if a != b
    )
    assert common >= 8 and stats.hits == 3
    # Every prompt reuses at least the shared template; the repeated one all but its last block.
    assert stats.hit_tokens >= 2 * (common // 4 * 4) + (len(first.prompt_ids) - 1) // 4 * 4
    cold_runs = [submit(cold, text) for text in texts]
    drain(cold)
    eos = sorted(worker.eos_ids)
    for (seq, events), (cold_seq, _) in zip(runs, cold_runs, strict=True):
        assert seq.generated == cold_seq.generated == reference(worker.model, seq.prompt_ids, MAX_NEW, eos)
        assert streamed_text(events) == worker.tokenizer.decode(seq.generated, skip_special_tokens=True)
        assert isinstance(events[-1], Finished) and events[-1].prompt_tokens == len(seq.prompt_ids)
    assert cold.prefix_cache.stats.hits == 0 and len(cold.prefix_cache) == 0


def test_adapters_never_share_cached_prefixes_with_the_base_or_each_other(
    lively_model_dir: Path, adapter_dirs: list[Path]
) -> None:
    worker = ModelWorker(lively_model_dir, torch.device("cpu"), WorkerConfig())
    # Load both adapters (and the base) with a first request each, so every namespace exists.
    for adapter in [None, *adapter_dirs]:
        submit(worker, "warm up", adapter=adapter, max_new=1)
    drain(worker)
    cache = worker.prefix_cache
    question = "tell me a story"
    # The base model has seen this prompt; each adapter has seen only its warm-up prompt.
    submit(worker, question, max_new=1)
    drain(worker)
    prompt = chat_prompt(worker, question)
    base_hit = cache.cached_length(worker.adapters.peek(None) or "", prompt, len(prompt) - 1)
    names = [worker.adapters.peek(a) or "" for a in adapter_dirs]
    shared = [cache.cached_length(name, prompt, len(prompt) - 1) for name in names]
    assert base_hit > max(shared) > 0  # adapters only reuse their own warm-up's system prompt
    eos = sorted(worker.eos_ids)
    for adapter, name in zip(adapter_dirs, names, strict=True):
        hits_before = cache.stats.hit_tokens
        miss, _ = submit(worker, question, adapter=adapter)  # reuses only this adapter's own system prompt
        drain(worker)
        assert cache.stats.hit_tokens - hits_before == max(shared)
        assert cache.cached_length(name, prompt, len(prompt) - 1) == (len(prompt) - 1) // 8 * 8
        hit, _ = submit(
            worker, question, adapter=adapter
        )  # now the whole prompt but its last block is cached
        drain(worker)
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(lively_model_dir), dtype=torch.float32), str(adapter)
        )
        expected = reference(adapted, prompt, MAX_NEW, eos)
        assert miss.generated == hit.generated == expected
    base_answer, _ = submit(worker, question)
    drain(worker)
    base = AutoModelForCausalLM.from_pretrained(str(lively_model_dir), dtype=torch.float32)
    assert base_answer.generated == reference(base, prompt, MAX_NEW, eos)
    assert base_answer.generated != expected  # the adapter really changes the answer (and so the KV)


def test_a_burst_is_prefilled_in_groups_that_stream_before_the_rest(lively_model_dir: Path) -> None:
    config = WorkerConfig(prefill_token_budget=64, prefix_cache_mb=0)
    worker = ModelWorker(lively_model_dir, torch.device("cpu"), config)
    runs = [submit(worker, f"question number {i}") for i in range(6)]
    longest = max(len(seq.prompt_ids) for seq, _ in runs)
    assert 2 * longest > 64 >= longest  # one request a group, with this budget
    worker.step()
    # The first group streamed its first token (and had a decode step) before the others' prefill.
    assert [len(seq.generated) for seq, _ in runs] == [2, 0, 0, 0, 0, 0]
    worker.step()
    assert [bool(seq.generated) for seq, _ in runs][:2] == [True, True]
    assert len(runs[0][0].generated) == 3  # decode steps for the running sequence went on meanwhile
    drain(worker)
    eos = sorted(worker.eos_ids)
    for seq, _ in runs:
        assert seq.generated == reference(worker.model, seq.prompt_ids, MAX_NEW, eos)


def test_an_idle_worker_waits_for_a_burst_to_finish_arriving(tiny_model_dir: Path) -> None:
    worker = ModelWorker(tiny_model_dir, torch.device("cpu"), WorkerConfig())
    assert worker.settle_time(quiet=1.0, longest=5.0) == 0.0  # nothing waiting
    first, _ = submit(worker, "one")
    assert 0.9 < worker.settle_time(quiet=1.0, longest=5.0) <= 1.0
    second, _ = submit(worker, "two")
    first.arrived -= 0.8  # the first came 0.8 s before the second: wait for the quiet gap after the latest
    assert 0.9 < worker.settle_time(quiet=1.0, longest=5.0) <= 1.0
    assert (
        worker.settle_time(quiet=1.0, longest=1.5) <= 0.7
    )  # but never longer than `longest` after the first
    first.arrived -= 10
    assert worker.settle_time(quiet=1.0, longest=5.0) == 0.0
    first.arrived = second.arrived = 0.0
    worker.step()  # admitted and prefilled: a running batch never waits for more arrivals
    submit(worker, "three")
    assert worker.running and worker.settle_time(quiet=1.0, longest=5.0) == 0.0
    drain(worker)
