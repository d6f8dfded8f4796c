"""Continuous batching for one base model: admit, prefill (in groups and chunks), decode, retire.

`ModelWorker.step()` is one scheduler iteration for one base model:
1. drop requests whose client went away;
2. if no prefill is under way and there is room, take waiting requests (loading their LoRA
   adapters) into a prefill group, in arrival order, while the group's padded count of tokens
   still to prefill stays within `prefill_token_budget`. A prompt's tokens already in the prefix
   cache (see `prefix_cache`) are not prefilled again: its cached KV is copied into the group's
   cache and only the rest of the prompt is fed to the model;
3. run one forward of that group's prefill (at most the budget's worth of tokens, so a long
   prompt never stalls the others' decoding for long); when the group is done its prompts' KV
   go into the prefix cache, it samples and streams its first tokens at once and joins the
   running batch;
4. run one decode step for every running sequence at once, whatever adapter each uses;
5. retire finished sequences and trim the cache.
So a burst of requests is prefilled a budget's worth at a time, each group streaming its first
tokens as soon as it is done, with decode steps of the running sequences in between: nobody
waits for the whole burst's prefill, and streaming never stalls for more than one group.
Only the engine thread calls `step()`; requests arrive through `submit()` from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from preftune.inference.adapters import AdapterCache
from preftune.inference.detokenize import IncrementalText
from preftune.inference.kv_batch import BatchKV, cache_layers
from preftune.inference.prefix_cache import PrefixCache
from preftune.inference.prompts import end_of_turn_ids
from preftune.inference.sampling import make_generator, sample_token
from preftune.inference.types import Finished, FinishReason, SamplingParams, StreamEvent, TextDelta
from preftune.kernels.packed_linear import pack_frozen_linears

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    max_batch_size: int = 32
    prefill_chunk: int = 512  # at most this many prompt tokens per row in one prefill forward
    # Padded prompt tokens (rows x longest uncached part) prefilled in one group, and in one forward.
    # A group's requests all get their first token when the group is done, so a smaller budget
    # gives a burst's first requests their first token sooner, at the cost of more forwards (each
    # one reads all the weights) and of decode steps in between. About 10 short chat prompts a
    # group; measured against 64, 128 and 256 on a 2-core CPU (benchmarks/RESULTS.md).
    prefill_token_budget: int = 160
    adapter_cache_size: int = 8
    # Automatic prefix caching: KV of recent prompt prefixes kept per base model (0 turns it off).
    # 256 MB holds ~5,600 tokens of SmolLM2-135M's KV (46 KB a token), ~2,000 of an 8B Llama's in bf16.
    prefix_cache_mb: float = 256.0
    # Tokens per cached block: a prompt reuses whole blocks only. Small, because on a CPU every
    # prompt token prefilled again costs real compute while a block costs one dict entry.
    prefix_block_size: int = 8


@dataclass
class Sequence:
    """One generation in flight. `emit` must be safe to call from the engine thread."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    adapter_path: Path | None
    emit: Callable[[StreamEvent], None]
    detok: IncrementalText
    generator: torch.Generator
    cancelled: bool = False
    adapter: str = ""
    generated: list[int] = field(default_factory=list)
    arrived: float = 0.0  # time.monotonic() at submit
    position: int = 0  # rotary position of the next token fed to the model
    done: bool = False


@dataclass
class _Prefill:
    """A group being prefilled. Row layout: `[pad, cached prefix | pad, rest of the prompt]`:
    the cache starts with `past` columns (each row's cached prefix, right-aligned), and `ids`
    holds each row's uncached tokens, left-padded; `mask` covers both parts."""

    seqs: list[Sequence]
    cached: list[int]  # prompt tokens of each row taken from the prefix cache
    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    cache: DynamicCache
    past: int
    done_cols: int = 0


def _row_kv(layer: Any, row: int, columns: torch.Tensor) -> torch.Tensor:
    """One cache layer's keys and values of one row at these columns: `(2, kv_heads, columns, head_dim)`."""
    return torch.stack([layer.keys[row].index_select(1, columns), layer.values[row].index_select(1, columns)])


def load_model(path: Path, device: torch.device) -> tuple[Any, Any]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a server log wants one line per load, not a progress bar
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    # fp32 on CPU: bf16 matmuls are slower than fp32 on most CPUs; half precision on GPU.
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    # Serving never trains: with its weights frozen, the base's linear layers run as pre-packed
    # oneDNN matmuls on x86 CPUs (decode steps and lone prefills 10-20% faster; a no-op on a GPU).
    model.requires_grad_(False)
    pack_frozen_linears(model)
    return model, tokenizer


class ModelWorker:
    """One base model in memory, its LoRA adapters, and the batch of sequences running on it."""

    def __init__(self, path: Path, device: torch.device, config: WorkerConfig) -> None:
        self.path = path
        self.device = device
        self.config = config
        self.model, self.tokenizer = load_model(path, device)
        gen_config = getattr(self.model, "generation_config", None)
        self.eos_ids = end_of_turn_ids(self.tokenizer, getattr(gen_config, "eos_token_id", None))
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.adapters = AdapterCache(self.model, config.adapter_cache_size)
        self.prefix_cache = PrefixCache(config.prefix_block_size, int(config.prefix_cache_mb * 2**20))
        self._lock = threading.Lock()  # guards `waiting` (submit runs on other threads)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.kv: BatchKV | None = None
        self._prefill: _Prefill | None = None
        self.steps = 0
        self.tokens_generated = 0
        self.finished: Counter[str] = Counter()  # finish reason -> count (for stats and tests)

    # -- called from any thread ------------------------------------------------------------
    def new_sequence(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_new_tokens: int,
        adapter_path: Path | None,
        emit: Callable[[StreamEvent], None],
    ) -> Sequence:
        return Sequence(
            prompt_ids=prompt_ids,
            params=params,
            max_new_tokens=max_new_tokens,
            adapter_path=adapter_path,
            emit=emit,
            detok=IncrementalText(self.tokenizer, params.stop),
            generator=make_generator(params),
        )

    def submit(self, seq: Sequence) -> None:
        seq.arrived = time.monotonic()
        with self._lock:
            self.waiting.append(seq)

    def settle_time(self, quiet: float, longest: float) -> float:
        """Seconds to hold off admitting, so that a burst arriving at once is prefilled together.

        Only an idle worker waits: until no request has arrived for `quiet` seconds, and never
        longer than `longest` after the first one. A busy worker admits at its next step anyway,
        and whatever arrived during that step's forwards is taken together.
        """
        if self.running or self._prefill is not None:
            return 0.0
        with self._lock:
            if not self.waiting:
                return 0.0
            first, last = self.waiting[0].arrived, self.waiting[-1].arrived
        now = time.monotonic()
        return max(0.0, min(last + quiet, first + longest) - now)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._prefill)

    def idle(self) -> bool:
        return not self.has_work()

    # -- engine thread only ----------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        try:
            self._drop_cancelled()
            if self._prefill is None:
                self._admit()
            if self._prefill is not None:
                self._prefill_chunk()
            if self.running:
                self._decode()
            self.steps += 1
        except Exception as exc:  # a model failure ends this batch, never the server
            log.exception("generation failed on %s", self.path)
            self._fail_all(f"generation failed: {exc}")

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        seqs: list[Sequence],
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self.adapters.is_peft:
            kwargs["adapter_names"] = [s.adapter for s in seqs]
        out = self.adapters.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1, :]

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [s for s in self.waiting if s.cancelled]
            for s in gone:
                self.waiting.remove(s)
        for s in gone:
            self._finish(s, "cancelled")
        if any(s.cancelled for s in self.running):
            for s in self.running:
                if s.cancelled:
                    self._finish(s, "cancelled")
            self._retire()

    def in_use(self) -> set[str]:
        busy = {s.adapter for s in self.running}
        if self._prefill is not None:
            busy.update(s.adapter for s in self._prefill.seqs)
        return busy

    def _admit(self) -> None:
        room = self.config.max_batch_size - len(self.running)
        group: list[Sequence] = []
        budget = self.config.prefill_token_budget
        longest = 0  # the longest uncached part of a prompt in the group
        with self._lock:
            pending = list(self.waiting)
        for seq in pending:
            if len(group) >= room:
                break
            in_use = self.in_use() | {s.adapter for s in group}
            if not self.adapters.can_load(seq.adapter_path, in_use):
                continue  # its adapter waits for a slot; later requests may still fit
            # An adapter not loaded yet gets a fresh name when it loads, so nothing is cached for it.
            namespace = self.adapters.peek(seq.adapter_path)
            cached = 0
            if namespace is not None:
                cached = self.prefix_cache.cached_length(namespace, seq.prompt_ids, len(seq.prompt_ids) - 1)
            length = max(longest, len(seq.prompt_ids) - cached)
            if group and length * (len(group) + 1) > budget:
                break
            with self._lock:
                self.waiting.remove(seq)
            try:
                seq.adapter = self.adapters.ensure(seq.adapter_path, in_use)
            except Exception as exc:
                self._finish(seq, "error", str(exc))
                continue
            group.append(seq)
            longest = length
        if group:
            self._prefill = self._build_prefill(group)

    def _build_prefill(self, group: list[Sequence]) -> _Prefill:
        """Lay out a group's prefill: cached prefixes into a fresh cache, the rest as input ids."""
        hits: list[tuple[int, torch.Tensor | None]] = []
        for seq in group:
            limit = len(seq.prompt_ids) - 1  # the last prompt token must run: its logits give the first token
            hits.append(self.prefix_cache.lookup(seq.adapter, seq.prompt_ids, limit))
        past = max(n for n, _ in hits)
        width = max(len(seq.prompt_ids) - n for seq, (n, _) in zip(group, hits, strict=True))
        ids = torch.full((len(group), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros((len(group), past + width), dtype=torch.long)
        for row, (seq, (n, _)) in enumerate(zip(group, hits, strict=True)):
            rest = seq.prompt_ids[n:]
            ids[row, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[row, past - n : past] = 1
            mask[row, past + width - len(rest) :] = 1
        cached = torch.tensor([n for n, _ in hits], dtype=torch.long)
        positions = cached[:, None] + (mask[:, past:].cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        if past:
            kv = next(t for _, t in hits if t is not None)
            layers, _, heads, _, dim = kv.shape
            prefix = kv.new_zeros((len(group), layers, 2, heads, past, dim))
            for row, (n, t) in enumerate(hits):
                if t is not None:
                    prefix[row, :, :, :, past - n :] = t
            cache = DynamicCache(ddp_cache_data=[(prefix[:, i, 0], prefix[:, i, 1]) for i in range(layers)])
        return _Prefill(
            seqs=group,
            cached=[n for n, _ in hits],
            ids=ids.to(self.device),
            mask=mask.to(self.device),
            positions=positions.to(self.device),
            cache=cache,
            past=past,
        )

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else next(iter(self.eos_ids), 0))

    def _prefill_chunk(self) -> None:
        p = self._prefill
        assert p is not None
        if all(s.cancelled for s in p.seqs):
            for s in p.seqs:
                self._finish(s, "cancelled")
            self._prefill = None
            return
        rows, width = p.ids.shape
        chunk = max(1, min(self.config.prefill_chunk, self.config.prefill_token_budget // rows))
        start, end = p.done_cols, min(p.done_cols + chunk, width)
        logits = self._forward(
            p.ids[:, start:end], p.mask[:, : p.past + end], p.positions[:, start:end], p.cache, p.seqs
        )
        p.done_cols = end
        if end < width:
            return
        self._prefill = None
        for seq in p.seqs:
            seq.position = len(seq.prompt_ids)
        batch = BatchKV(p.cache, p.mask)
        keep = [i for i, seq in enumerate(p.seqs) if self._accept(seq, logits[i])]
        # After the first tokens are out (it costs a few ms), before finished rows leave the cache.
        self._remember_prompts(p)
        if not keep:
            return
        if len(keep) < len(p.seqs):
            batch.select(keep)
        joined = [p.seqs[i] for i in keep]
        if self.kv is None or not self.running:
            self.kv, self.running = batch, joined
        else:
            self.kv.merge(batch)
            self.running.extend(joined)

    def _remember_prompts(self, p: _Prefill) -> None:
        """Put the full blocks of the group's prompts that were not cached yet into the prefix cache."""
        cache = self.prefix_cache
        if not cache.enabled:
            return
        layers = cache_layers(p.cache)
        if len(layers) != len(p.cache.layers):  # e.g. layers sharing another layer's KV: not supported
            log.warning("prefix caching turned off for %s: its KV cache layout is not supported", self.path)
            cache.capacity_bytes = 0
            return
        size = cache.block_size
        for row, (seq, cached) in enumerate(zip(p.seqs, p.cached, strict=True)):
            blocks = len(seq.prompt_ids) // size
            if blocks * size <= cached:
                continue
            columns = p.mask[row].nonzero().squeeze(1)[: blocks * size]
            try:
                kv = torch.stack([_row_kv(layer, row, columns) for layer in layers])
            except RuntimeError:  # layers of different shapes cannot be stacked into blocks
                log.warning("prefix caching turned off for %s: its layers' KV differ in shape", self.path)
                cache.capacity_bytes = 0
                return
            cache.insert(seq.adapter, seq.prompt_ids[: blocks * size], kv)

    def _decode(self) -> None:
        kv = self.kv
        assert kv is not None
        ids = torch.tensor([[s.generated[-1]] for s in self.running], dtype=torch.long, device=self.device)
        positions = torch.tensor([[s.position] for s in self.running], dtype=torch.long, device=self.device)
        mask = torch.cat([kv.mask, kv.mask.new_ones((kv.rows, 1))], dim=1)
        logits = self._forward(ids, mask, positions, kv.cache, self.running)
        kv.mask = mask
        finished = False
        for i, seq in enumerate(self.running):
            seq.position += 1
            if not self._accept(seq, logits[i]):
                finished = True
        if finished:
            self._retire()

    def _accept(self, seq: Sequence, logits: torch.Tensor) -> bool:
        """Sample `seq`'s next token, stream it; False when the sequence has finished."""
        if seq.cancelled:
            self._finish(seq, "cancelled")
            return False
        token = sample_token(logits, seq.params, seq.generator)
        seq.generated.append(token)
        self.tokens_generated += 1
        if token in self.eos_ids and not seq.params.ignore_eos:
            self._finish(seq, "stop")
            return False
        delta, hit_stop = seq.detok.push(token)
        if delta:
            seq.emit(TextDelta(delta, 1))
        if hit_stop:
            self._finish(seq, "stop")
        elif len(seq.generated) >= seq.max_new_tokens or seq.position + 1 >= self.context_length:
            self._finish(seq, "length")
        return not seq.done

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        self.finished[reason] += 1
        if reason in ("stop", "length"):
            rest = seq.detok.flush()
            if rest:
                seq.emit(TextDelta(rest, 0))
        seq.emit(Finished(reason, len(seq.prompt_ids), len(seq.generated), error))

    def _retire(self) -> None:
        keep = [i for i, s in enumerate(self.running) if not s.done]
        self.running = [self.running[i] for i in keep]
        if not self.running:
            self.kv = None
        elif self.kv is not None:
            self.kv.select(keep)

    def _fail_all(self, message: str, *, waiting_too: bool = False) -> None:
        """End the running batch (and, when unloading, the queue) with an error."""
        waiting: list[Sequence] = []
        if waiting_too:
            with self._lock:
                waiting = list(self.waiting)
                self.waiting.clear()
        prefill = self._prefill.seqs if self._prefill else []
        for seq in [*self.running, *prefill, *waiting]:
            self._finish(seq, "error", message)
        self.running, self.kv, self._prefill = [], None, None

    def fail_pending(self, message: str) -> None:
        """Finish every request of this worker with an error (the model is being unloaded)."""
        self._fail_all(message, waiting_too=True)
