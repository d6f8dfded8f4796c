"""Serving throughput: preftune's batching engine against plain `transformers.generate`, one run.

1, 4 and 16 concurrent clients each ask for 64 new tokens (EOS ignored, greedy, so both sides
do the same work). The baseline is what you get without a server: call `model.generate` for
one request at a time, in arrival order. preftune is the embedded `LocalEngine` (the one behind
`/v1/chat/completions`), driven by asyncio clients in the same process. Reported: aggregate
new tokens/s, time to first token p50/p99, and preftune's ratio over the baseline.

Before each row the engine's prefix cache is emptied and one warm-up request (a question asked
by no client) is answered, so every row starts from a warm server that has cached the chat
template's shared beginning (system prompt) and nothing of the clients' own questions. The
single-request time to first token of the target is the 1-client row's (a warm server); the
cold number (the first request after the model is loaded) is reported too.

    .venv/bin/python benchmarks/serve_throughput.py [--model smollm2-135m-instruct] [--write-results]

Target at 16 clients: >= 4x the baseline's aggregate tokens/s, TTFT p50 under 2x the single-request time.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from preftune.config import Settings
from preftune.contracts.base_models import DEFAULT_MODEL, resolve_model
from preftune.inference.batch import WorkerConfig
from preftune.inference.local import EngineConfig, LocalEngine
from preftune.inference.prompts import render_prompt
from preftune.inference.types import Finished, ModelTarget, SamplingParams, TextDelta
from preftune.kernels.packed_linear import pack_frozen_linears

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
START, END = "<!-- serve_throughput:start -->", "<!-- serve_throughput:end -->"
QUESTIONS = [
    "What is the capital of France?",
    "Explain photosynthesis in one paragraph.",
    "Write a haiku about the sea.",
    "How do I reverse a list in Python?",
    "Why is the sky blue?",
    "Give me three tips for sleeping better.",
    "What does DPO stand for in machine learning?",
    "Summarise the plot of Hamlet.",
    "How far is the Moon from the Earth?",
    "What is a prime number?",
    "Translate 'good morning' into Spanish.",
    "Name the planets of the solar system.",
    "What causes rain?",
    "How does a bicycle stay upright?",
    "Suggest a name for a grey cat.",
    "What is the boiling point of water at sea level?",
]
SINGLES = len(QUESTIONS)  # warm single requests measured for the target's reference (their median)
WARM_UP = "Hello! Who are you?"  # asked by no client: warms the server without caching their questions


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(ttfts: list[float], tokens: int, wall: float) -> dict[str, float]:
    return {
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": percentile(ttfts, 0.99),
        "wall_s": wall,
    }


class _FirstToken(BaseStreamer):
    """Notes when `generate` produces its first new token (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def baseline(model: Any, prompts: list[list[int]], new_tokens: int) -> dict[str, float]:
    """All clients arrive at once; plain transformers answers them one after another."""
    start = time.perf_counter()
    ttfts, total = [], 0
    for prompt in prompts:
        streamer = _FirstToken()
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=streamer,
                pad_token_id=model.generation_config.eos_token_id,
            )
        total += out.shape[1] - len(prompt)
        ttfts.append((streamer.first or time.perf_counter()) - start)
    return summarise(ttfts, total, time.perf_counter() - start)


async def preftune(
    engine: LocalEngine, target: ModelTarget, messages: list[list[dict[str, str]]], new_tokens: int
) -> dict[str, float]:
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()

    async def client(conversation: list[dict[str, str]]) -> tuple[float, int]:
        generation = await engine.generate(target, conversation, params)
        first: float | None = None
        async for event in generation:
            if isinstance(event, TextDelta) and first is None:
                first = time.perf_counter()
            if isinstance(event, Finished):
                return (first or time.perf_counter()) - start, event.completion_tokens
        raise RuntimeError("no finish")

    results = await asyncio.gather(*(client(m) for m in messages))
    return summarise([r[0] for r in results], sum(r[1] for r in results), time.perf_counter() - start)


def _uncached(prompt: list[int], cached: list[int], block: int) -> list[int]:
    """The part of `prompt` a warm server must still prefill: all but the whole blocks it shares with `cached`."""
    shared = 0
    for a, b in zip(prompt, cached, strict=False):
        if a != b:
            break
        shared += 1
    shared = min(shared // block * block, len(prompt) - 1)  # the last token is always computed
    return prompt[shared:]


def forward_seconds(model: Any, tokens: list[int], repeats: int = 5) -> float:
    """Median time of one forward over `tokens` as a single unpadded row, last position's logits only."""
    ids = torch.tensor([tokens])
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(ids, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first call pays first-call costs


def gemm_seconds(model: Any, n_tokens: int, repeats: int = 5) -> float:
    """Median time of a prefill's matrix multiplications alone, for `n_tokens` prompt tokens.

    Every linear layer of the decoder times an `[n_tokens, in]` input (through the layer itself, so
    with the kernel the engine uses: pre-packed oneDNN on x86, see `kernels/packed_linear.py`), and
    the output layer for one position: no attention, norms, activations, rotary embedding, Python or
    scheduling. No fp32 engine built on that GEMM prefills faster.
    """
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    inputs = {width: torch.randn(n_tokens, width) for width in {m.in_features for m in linears}}
    last = torch.randn(1, head.in_features)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for layer in linears:
                layer(inputs[layer.in_features])
            torch.mm(last, head.weight.t())
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def median_floor(model: Any, suffixes: list[list[int]]) -> dict[str, Any]:
    """The least time any schedule needs before the median request of a burst has its first token.

    The median of n first-token times is the mean of the sorted values at ranks n//2 and n//2+1 (or
    the middle one): the k-th first token cannot come before k prompts are prefilled, and the
    cheapest way to prefill any k of them is one forward over the k shortest uncached parts with no
    padding. That forward is timed here without even the attention to the cached prefix, and with no
    sampling, streaming or scheduling: it is below what any engine with fp32 weights can do on this
    machine.
    """
    n = len(suffixes)
    ranks = [n // 2 + 1] if n % 2 else [n // 2, n // 2 + 1]
    shortest = sorted(suffixes, key=len)
    tokens = {k: sum(len(s) for s in shortest[:k]) for k in ranks}
    times = {k: forward_seconds(model, [t for s in shortest[:k] for t in s]) for k in ranks}
    return {
        "clients": n,
        "ranks": ranks,
        "tokens": tokens,
        "seconds": statistics.mean(times.values()),
        "gemm_seconds": statistics.mean(gemm_seconds(model, t) for t in tokens.values()),
    }


def _hit_tokens(engine: LocalEngine) -> int:
    """Prompt tokens the engine's prefix cache has spared so far (one model loaded)."""
    return int(next(iter(engine.stats().values()))["prefix_cache"]["hit_tokens"])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    models_dir = Path(args.models_dir) if args.models_dir else Settings().models_dir
    path = resolve_model(args.model, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    load_before = os.getloadavg()[0]
    started = datetime.now(UTC)
    worker = WorkerConfig()
    if args.prefill_token_budget:
        worker.prefill_token_budget = args.prefill_token_budget
    engine = LocalEngine(EngineConfig(device="cpu", worker=worker))
    await engine.start()
    target = ModelTarget(args.model, path)
    await engine.load(target)
    warm_up = [[{"role": "user", "content": WARM_UP}]]
    # Cold: the first request after loading (empty prefix cache, first-call costs of every kernel).
    cold = await preftune(engine, target, warm_up, 4)
    # Warm single requests, each alone on the server in a row's starting state: their median is the
    # single-request time to first token of the target (one sample would be at the mercy of noise).
    singles = []
    for question in QUESTIONS[:SINGLES]:
        await engine.clear_prefix_caches()
        await preftune(engine, target, warm_up, 4)
        singles.append(
            (await preftune(engine, target, [[{"role": "user", "content": question}]], 4))["ttft_p50_s"]
        )
    rows = []
    for clients in args.clients:
        conversations = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(clients)]
        prompts = [render_prompt(tokenizer, c) for c in conversations]
        # Warm both paths once so neither pays first-call costs inside the measurement; preftune's
        # prefix cache then holds the warm-up prompt only (see the module docstring).
        baseline(model, [render_prompt(tokenizer, warm_up[0])], 4)
        base = baseline(model, prompts, args.new_tokens)
        # One burst is one noisy sample on a shared 2-core machine: repeat preftune's side (seconds,
        # where the baseline's takes minutes), each time from the same starting state, and keep the
        # burst with the median time to first token.
        bursts = []
        for _ in range(args.repeats):
            await engine.clear_prefix_caches()
            await preftune(engine, target, warm_up, 4)
            hits_before = _hit_tokens(engine)
            result = await preftune(engine, target, conversations, args.new_tokens)
            result["prefilled"] = sum(len(p) for p in prompts) - (_hit_tokens(engine) - hits_before)
            bursts.append(result)
        bursts.sort(key=lambda r: r["ttft_p50_s"])
        ours: dict[str, Any] = {
            **bursts[(len(bursts) - 1) // 2],
            "ttft_p50_s_all": [r["ttft_p50_s"] for r in bursts],
        }
        prefilled = int(ours.pop("prefilled"))
        rows.append(
            {
                "clients": clients,
                "baseline": base,
                "preftune": ours,
                "ratio": ours["tokens_per_s"] / base["tokens_per_s"],
                "prompt_tokens": sum(len(p) for p in prompts),
                "prefilled_tokens": prefilled,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    await engine.stop()
    # The compute floor of the largest row's median time to first token (see `median_floor`), next to
    # the same kind of forward for one lone request's uncached part.
    cached = render_prompt(tokenizer, warm_up[0])
    block = worker.prefix_block_size
    top_clients = max(args.clients)
    top_prompts = [
        render_prompt(tokenizer, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
        for i in range(top_clients)
    ]
    # Floors are measured with the engine's own kernels (its linear layers frozen and pre-packed),
    # on a copy: the baseline's `generate` above runs plain transformers, as users would.
    model = copy.deepcopy(model).requires_grad_(False)
    pack_frozen_linears(model)
    floor = median_floor(model, [_uncached(p, cached, block) for p in top_prompts])
    lone = [
        _uncached(render_prompt(tokenizer, [{"role": "user", "content": q}]), cached, block)
        for q in QUESTIONS[:SINGLES]
    ]
    floor["lone_forward_s"] = statistics.median(forward_seconds(model, s) for s in lone)
    floor["lone_tokens"] = statistics.median(len(s) for s in lone)
    floor["lone_gemm_s"] = gemm_seconds(model, round(floor["lone_tokens"]))
    print(json.dumps({"median_floor": floor}), flush=True)
    single = next((r for r in rows if r["clients"] == 1), rows[0])
    return {
        "model": args.model,
        "new_tokens": args.new_tokens,
        "rows": rows,
        "prefill_token_budget": worker.prefill_token_budget,
        "prefix_block_size": worker.prefix_block_size,
        "single_request_ttft_s": statistics.median(singles),
        "median_floor": floor,
        "repeats": args.repeats,
        "single_request_ttfts_s": singles,
        "cold_ttft_s": cold["ttft_p50_s"],
        "baseline_single_ttft_s": single["baseline"]["ttft_p50_s"],
        "single_request_latency_s": single["preftune"]["wall_s"],
        "machine": f"run {started:%Y-%m-%d %H:%M} to {datetime.now(UTC):%H:%M} UTC, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load_before:.1f} at start and "
        f"{os.getloadavg()[0]:.1f} at end",
    }


def markdown(result: dict[str, Any], command: str, notes: str) -> str:
    lines = [
        START,
        "## Serving throughput (`benchmarks/serve_throughput.py`)",
        "",
        f"Model `{result['model']}`, {result['new_tokens']} new tokens per client (greedy, EOS ignored), "
        f"{result['machine']}. Baseline: `transformers` `generate`, one request at a time. "
        "preftune: the embedded `LocalEngine` (continuous batching, automatic prefix caching in "
        f"{result['prefix_block_size']}-token blocks, prefill groups of at most "
        f"{result['prefill_token_budget']} padded prompt tokens), same process. Before each row the "
        "prefix cache is emptied and one warm-up request is answered whose question no client asks, so "
        "only the chat template's shared beginning (the default system prompt) is cached. preftune's "
        f"burst is run {result.get('repeats', 1)} times per row, each from that state; the table shows the "
        "burst with the median TTFT p50 (all p50s below the table).",
        "",
        "| clients | baseline tok/s | baseline TTFT p50 / p99 (s) | preftune tok/s | preftune TTFT p50 / p99 (s) "
        "| tok/s ratio | prompt tokens prefilled by preftune |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        b, p = row["baseline"], row["preftune"]
        lines.append(
            f"| {row['clients']} | {b['tokens_per_s']:.1f} | {b['ttft_p50_s']:.3f} / {b['ttft_p99_s']:.3f} "
            f"| {p['tokens_per_s']:.1f} | {p['ttft_p50_s']:.3f} / {p['ttft_p99_s']:.3f} | {row['ratio']:.2f}x "
            f"| {row['prefilled_tokens']} of {row['prompt_tokens']} |"
        )
    lines += [
        "",
        "TTFT p50 of every burst: "
        + "; ".join(
            f"{row['clients']} clients: {', '.join(f'{t:.3f}' for t in row['preftune']['ttft_p50_s_all'])} s"
            for row in result["rows"]
        )
        + ".",
    ]
    top = max(result["rows"], key=lambda r: r["clients"])
    ttft, single = top["preftune"]["ttft_p50_s"], result["single_request_ttft_s"]
    lines += [
        "",
        f"Single-request time to first token, the target's reference: {single:.3f} s, the median of "
        f"{len(result['single_request_ttfts_s'])} requests each alone on a warm server (prefix cache emptied, "
        "then one warm-up request, as before every row): "
        f"{', '.join(f'{t:.3f}' for t in result['single_request_ttfts_s'])} s. Cold, the first request after the model "
        f"is loaded (empty prefix cache, first call of every kernel): {result['cold_ttft_s']:.3f} s. "
        f"`transformers` `generate` alone: {result['baseline_single_ttft_s']:.3f} s.",
        "",
        f"Targets at {top['clients']} clients: aggregate tokens/s {top['ratio']:.2f}x the baseline (target >= 4x: "
        f"{'met' if top['ratio'] >= 4 else 'NOT met'}); time to first token p50 {ttft:.3f} s, "
        f"{ttft / single:.2f}x the single request's {single:.3f} s (target under 2x, {2 * single:.3f} s: "
        f"{'met' if ttft < 2 * single else 'NOT met'}).",
    ]
    floor = result.get("median_floor")
    if floor:
        ranks = " and ".join(str(k) for k in floor["ranks"])
        tokens = " and ".join(str(t) for t in floor["tokens"].values())
        lines += [
            "",
            f"Compute floor of that median: the {ranks}-th first tokens of {floor['clients']} cannot come "
            f"before as many prompts are prefilled. One forward over the shortest uncached prompt parts "
            f"({tokens} tokens, one unpadded row, no attention to the cached prefix, no sampling) takes "
            f"{floor['seconds']:.3f} s here, {floor['seconds'] / single:.2f}x the single request's time to "
            f"first token (the same forward over one lone request's {floor['lone_tokens']:.0f} uncached tokens: "
            f"{floor['lone_forward_s']:.3f} s). "
            + (
                "No schedule over this forward (transformers' fp32 layers on the engine's kernels) can bring the median under 2x here: prefill "
                "here is compute-bound, so 8 prompts cost several times one."
                if floor["seconds"] >= 2 * single
                else "The floor is under 2x: a better schedule could meet the target."
            ),
        ]
        if "gemm_seconds" in floor:
            # The most generous bound: the burst's forward costs its GEMMs plus no more than everything
            # else a lone request's time to first token holds (its own forward's non-GEMM work, the
            # template, sampling, streaming), though it prefills several times the tokens.
            gemm, lone_gemm = floor["gemm_seconds"], floor["lone_gemm_s"]
            rest = max(0.0, single - lone_gemm)
            bound = gemm + rest
            lines += [
                "",
                f"GEMM floor: the matrix multiplications alone of that prefill ({tokens} tokens, the model's own "
                f"weights and the engine's fp32 matmul kernel, no attention, norms, activations or scheduling) take {gemm:.3f} s, "
                f"{gemm / single:.2f}x the single request's whole time to first token and {gemm / lone_gemm:.2f}x "
                f"the same GEMMs for one lone request's {floor['lone_tokens']:.0f} uncached tokens "
                f"({lone_gemm:.3f} s). With the single request's non-GEMM time "
                f"({rest:.3f} s) added once and nothing more, the median first token "
                f"comes at {bound:.3f} s at best, {bound / single:.2f}x: "
                + (
                    "no fp32 engine on this GEMM can meet the target on this machine."
                    if bound >= 2 * single
                    else "under 2x, so only an engine whose non-GEMM work does not grow with the tokens "
                    "prefilled could meet the target here."
                ),
            ]
    if notes.strip():
        lines += ["", notes.strip()]
    lines += ["", f"Command: `{command}`", END]
    return "\n".join(lines)


def write_results(section: str) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--models-dir", default=None, help="default: PREFTUNE_HOME/models")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=3, help="bursts per row on preftune's side; the median one is reported"
    )
    parser.add_argument(
        "--prefill-token-budget", type=int, default=0, help="engine setting (default: the engine's own)"
    )
    parser.add_argument(
        "--notes", default=None, help="markdown file whose text is added to the section (measured context)"
    )
    parser.add_argument(
        "--write-results", action="store_true", help=f"update this benchmark's section of {RESULTS}"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    section = markdown(result, "python benchmarks/serve_throughput.py " + " ".join(sys.argv[1:]), notes)
    print(section)
    if args.write_results:
        write_results(section)


if __name__ == "__main__":
    main()
