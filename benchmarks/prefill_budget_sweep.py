"""Choosing the serving engine's `prefill_token_budget`: a 16-client burst's time to first token per budget.

For each budget, preftune alone (no baseline) answers the same 16-client burst as
`serve_throughput.py` (64 new tokens each, greedy, EOS ignored), each burst from a warm server
whose prefix cache holds only the chat template's shared beginning. The single-request time to
first token is measured just before each burst in the same state, so each row carries its own
reference and the ratio the target is about (p50 / single). Rounds repeat the budgets in turn,
so a noisy minute on a shared machine lands on every budget rather than on one.

    .venv/bin/python benchmarks/prefill_budget_sweep.py [--budgets 64 128 160 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from preftune.config import Settings
from preftune.contracts.base_models import DEFAULT_MODEL, resolve_model
from preftune.inference.batch import WorkerConfig
from preftune.inference.local import EngineConfig, LocalEngine
from preftune.inference.types import ModelTarget
from serve_throughput import QUESTIONS, WARM_UP, preftune


async def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    models_dir = Path(args.models_dir) if args.models_dir else Settings().models_dir
    worker = WorkerConfig()
    engine = LocalEngine(EngineConfig(device="cpu", worker=worker))
    await engine.start()
    target = ModelTarget(args.model, resolve_model(args.model, models_dir))
    await engine.load(target)
    warm_up = [[{"role": "user", "content": WARM_UP}]]
    burst = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.clients)]
    await preftune(engine, target, warm_up, 4)  # first-call costs of every kernel, outside the rows

    async def from_warm_state(messages: list[list[dict[str, str]]], new_tokens: int) -> dict[str, float]:
        await engine.clear_prefix_caches()
        await preftune(engine, target, warm_up, 4)
        return await preftune(engine, target, messages, new_tokens)

    rows = []
    try:
        for round_ in range(args.rounds):
            for budget in args.budgets:
                # The worker reads its config at each admission: changing it between bursts is safe.
                worker.prefill_token_budget = budget
                single = (await from_warm_state(burst[:1], 4))["ttft_p50_s"]
                result = await from_warm_state(burst, args.new_tokens)
                row = {
                    "round": round_ + 1,
                    "budget": budget,
                    "p50": result["ttft_p50_s"],
                    "p99": result["ttft_p99_s"],
                    "single": single,
                    "tokens_per_s": result["tokens_per_s"],
                    "load": os.getloadavg()[0],
                }
                print(
                    f"round {row['round']} budget {budget:>4}: TTFT p50 {row['p50']:.3f} s "
                    f"({row['p50'] / single:.2f}x single {single:.3f} s), p99 {row['p99']:.3f} s, "
                    f"{row['tokens_per_s']:.1f} tok/s, load {row['load']:.1f}",
                    flush=True,
                )
                rows.append(row)
    finally:
        await engine.stop()
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| round | prefill_token_budget | burst TTFT p50 / p99 (s) | single-request TTFT (s) | p50 / single "
        "| tok/s | load average |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['budget']} | {r['p50']:.3f} / {r['p99']:.3f} | {r['single']:.3f} "
            f"| {r['p50'] / r['single']:.2f}x | {r['tokens_per_s']:.1f} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--models-dir", default=None, help="default: PREFTUNE_HOME/models")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 160, 256])
    parser.add_argument("--rounds", type=int, default=2, help="times each budget is measured (in turn)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = asyncio.run(sweep(args))
    print(f"\n{args.clients} clients x {args.new_tokens} tokens, {os.cpu_count()} CPUs, started {started}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
