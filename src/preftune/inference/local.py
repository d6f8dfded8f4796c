"""The embedded engine: transformers + PEFT, continuous batching in one background thread.

One thread owns every model and runs the scheduler loop; each iteration gives every base
model with work one `ModelWorker.step()` (admit + a prefill chunk + one batched decode step).
Requests come in from the event loop through `generate()`, tokens go back through an
`asyncio.Queue` per request (`call_soon_threadsafe`), so a slow stream reader never blocks
the loop or other requests. Loading a base model (the cold start: reading its weights, about
a second for a 135M model on CPU, tens of seconds for 7B) happens in a helper thread so running
generations keep going meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from preftune.config import Settings
from preftune.errors import InvalidRequestError, PreftuneError
from preftune.inference.batch import ModelWorker, Sequence, WorkerConfig
from preftune.inference.engine import Generation, InferenceEngine, LoadedModel
from preftune.inference.prompts import render_prompt
from preftune.inference.types import Finished, ModelTarget, SamplingParams, StreamEvent

log = logging.getLogger(__name__)
T = TypeVar("T")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class EngineConfig:
    device: str = "auto"
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    # Base models loaded on demand (no deployment) kept in memory at once; the least recently
    # used idle one is unloaded to make room.
    max_on_demand_models: int = 2
    # An idle model waits this long after the latest arrival before its first prefill (at most
    # `burst_wait_max_s` after the first one), so that requests arriving together (a burst of
    # clients, a client's parallel calls) share one prefill instead of the first one going alone
    # and the rest queueing behind its prefill and a decode step. A lone request pays the 2 ms.
    burst_quiet_s: float = 0.002
    burst_wait_max_s: float = 0.010

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            device=settings.device, worker=WorkerConfig(adapter_cache_size=settings.adapter_cache_size)
        )


class LocalGeneration(Generation):
    def __init__(
        self, seq: Sequence, queue: asyncio.Queue[StreamEvent], prompt_tokens: int, wake: Callable[[], None]
    ) -> None:
        self._seq = seq
        self._queue = queue
        self._wake = wake
        self.prompt_tokens = prompt_tokens

    async def _events(self) -> AsyncIterator[StreamEvent]:
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, Finished):
                return

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    def cancel(self) -> None:
        if not self._seq.done and not self._seq.cancelled:
            self._seq.cancelled = True
            self._wake()


class LocalEngine(InferenceEngine):
    """transformers + PEFT on CPU or GPU; one thread, many models, many adapters per model."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.device = pick_device(self.config.device)
        self._workers: dict[Path, ModelWorker] = {}
        self._pins: dict[Path, set[str]] = {}
        self._last_used: dict[Path, float] = {}
        self._load_locks: dict[Path, threading.Lock] = {}
        self._registry_lock = threading.Lock()
        self._commands: list[Callable[[], None]] = []
        self._wake_event = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="preftune-inference", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None
        for worker in list(self._workers.values()):
            worker.fail_pending("the server is shutting down")
        self._workers.clear()

    def _wake(self) -> None:
        self._wake_event.set()

    def _run(self) -> None:
        quiet, longest = self.config.burst_quiet_s, self.config.burst_wait_max_s
        while not self._stopping:
            self._wake_event.clear()
            self._run_commands()
            busy = False
            pause = 0.5
            for worker in list(self._workers.values()):
                if not worker.has_work():
                    continue
                settle = worker.settle_time(quiet, longest)
                if settle > 0:  # a burst may still be arriving: a new request wakes us earlier
                    pause = min(pause, settle)
                    continue
                worker.step()
                busy = True
            if not busy:
                self._wake_event.wait(pause)

    def _run_commands(self) -> None:
        with self._registry_lock:
            commands, self._commands = self._commands, []
        for command in commands:
            command()

    async def _on_engine_thread(self, fn: Callable[[], T]) -> T:
        """Run `fn` between two scheduler steps (models are only touched by the engine thread)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def command() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        with self._registry_lock:
            self._commands.append(command)
        self._wake()
        return await asyncio.wrap_future(future)

    # -- models -------------------------------------------------------------------------
    def _load_worker(self, path: Path) -> ModelWorker:
        with self._registry_lock:
            lock = self._load_locks.setdefault(path, threading.Lock())
        with lock:  # one load per model, however many requests wait for it
            worker = self._workers.get(path)
            if worker is None:
                started = time.perf_counter()
                worker = ModelWorker(path, self.device, self.config.worker)
                log.info("loaded %s in %.1fs (cold start)", path, time.perf_counter() - started)
                self._workers[path] = worker
            return worker

    async def load(self, target: ModelTarget, *, pin_as: str | None = None) -> LoadedModel:
        path = target.base_path
        worker = self._workers.get(path)
        if worker is None:
            try:
                worker = await asyncio.to_thread(self._load_worker, path)
            except Exception as exc:  # a broken model directory is reported, and the server goes on
                raise PreftuneError(
                    f"model {target.name!r} could not be loaded from {path}: {type(exc).__name__}: {exc}",
                    param="model",
                    code="model_load_failed",
                ) from exc
        self._last_used[path] = time.monotonic()
        if pin_as is not None:
            self._pins.setdefault(path, set()).add(pin_as)
        if target.adapter_path is not None:
            adapter = target.adapter_path
            await self._on_engine_thread(lambda: worker.adapters.ensure(adapter, worker.in_use()))
        await self._on_engine_thread(self._evict_idle)
        return self._describe(worker)

    def _evict_idle(self) -> None:
        unpinned = [p for p in self._workers if not self._pins.get(p)]
        unpinned.sort(key=lambda p: self._last_used.get(p, 0.0))
        while len(unpinned) > self.config.max_on_demand_models:
            victim = next((p for p in unpinned if self._workers[p].idle()), None)
            if victim is None:
                return
            unpinned.remove(victim)
            del self._workers[victim]
            log.info("unloaded idle model %s", victim)

    async def unpin(self, target: ModelTarget, holder: str) -> None:
        holders = self._pins.get(target.base_path)
        if holders is not None:
            holders.discard(holder)
        await self._on_engine_thread(self._evict_idle)

    def is_loaded(self, target: ModelTarget) -> bool:
        return target.base_path in self._workers

    def _describe(self, worker: ModelWorker) -> LoadedModel:
        return LoadedModel(
            base_path=worker.path,
            pinned=bool(self._pins.get(worker.path)),
            adapters=tuple(worker.adapters.loaded()),
            context_length=worker.context_length,
        )

    def loaded(self) -> list[LoadedModel]:
        return [self._describe(w) for w in list(self._workers.values())]

    def worker(self, target: ModelTarget) -> ModelWorker:
        worker = self._workers.get(target.base_path)
        if worker is None:
            raise PreftuneError(
                f"model '{target.name}' is not loaded", param="model", code="model_not_loaded"
            )
        return worker

    # -- generation ---------------------------------------------------------------------
    async def generate(
        self, target: ModelTarget, messages: list[dict[str, str]], params: SamplingParams
    ) -> Generation:
        if self._thread is None:
            raise PreftuneError("the inference engine is not running", code="engine_stopped")
        worker = self.worker(target)
        self._last_used[target.base_path] = time.monotonic()
        prompt = render_prompt(worker.tokenizer, messages)
        max_new = check_lengths(len(prompt), params.max_tokens, worker.context_length)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        holder: dict[str, Sequence] = {}

        def emit(event: StreamEvent) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                holder["seq"].cancelled = True

        seq = worker.new_sequence(prompt, params, max_new, target.adapter_path, emit)
        holder["seq"] = seq
        worker.submit(seq)
        self._wake()
        return LocalGeneration(seq, queue, len(prompt), self._wake)

    async def clear_prefix_caches(self) -> None:
        """Forget every cached prompt prefix (benchmarks start each measurement from the same state)."""

        def clear() -> None:
            for worker in self._workers.values():
                worker.prefix_cache.clear()

        await self._on_engine_thread(clear)

    def stats(self) -> dict[str, Any]:
        return {
            str(path): {
                "running": len(w.running),
                "waiting": len(w.waiting),
                "steps": w.steps,
                "tokens_generated": w.tokens_generated,
                "finished": dict(w.finished),
                "prefix_cache": {
                    "blocks": len(w.prefix_cache),
                    "bytes": w.prefix_cache.bytes,
                    **vars(w.prefix_cache.stats),
                },
            }
            for path, w in list(self._workers.items())
        }


def check_lengths(prompt_tokens: int, max_tokens: int | None, context_length: int) -> int:
    """How many tokens the answer may have; a 400 naming the parameter when it cannot fit."""
    room = context_length - prompt_tokens
    if room <= 0:
        raise InvalidRequestError(
            f"the messages take {prompt_tokens} tokens, but this model's context is {context_length} tokens; "
            "shorten the conversation.",
            param="messages",
            code="context_length_exceeded",
        )
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise InvalidRequestError(
            f"max_tokens is {max_tokens}, but the messages take {prompt_tokens} of this model's "
            f"{context_length}-token context; set max_tokens to at most {room}.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens
