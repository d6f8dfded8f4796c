"""Training throughput on 1 and on 2 processes (torchrun, `preftune train --nproc-per-node`).

    .venv/bin/python benchmarks/scaling.py                       # smollm2-135m-instruct, 32 pairs
    .venv/bin/python benchmarks/scaling.py --model DIR --pairs 64 --procs 1 2 4

Each run is `preftune train` in its own subprocess, with the same global batch (batch_size x
gradient_accumulation_steps pairs a step, shared among the processes), the same data (the first N
orca pairs), LoRA, one epoch, fp32 (so 1 and 2 processes compute the same numbers). pairs/s is the
loop's: the steps' pairs over the steps' time from `metrics.jsonl`, without the first step (warm-up).
On a CPU every process gets cores // processes threads: 2 processes on a 2-core machine measure
what the distributed machinery costs (the same cores, more coordination), not a speed-up; on GPUs
each process has its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ORCA = ROOT.parent / "shared" / "data" / "orca_dpo_pairs" / "orca_dpo_pairs.jsonl"
KNOBS: dict[str, Any] = {
    "batch_size": 4,
    "gradient_accumulation_steps": 2,
    "max_length": 256,
    "n_epochs": 1,
    "precision": "fp32",
    "lora_dropout": 0.0,
    "n_checkpoints": 1,
}


def _data(pairs: int, directory: Path) -> Path:
    path = directory / "pairs.jsonl"
    with ORCA.open() as src, path.open("w") as dst:
        for _, line in zip(range(pairs), src, strict=False):
            dst.write(line)
    return path


def run(procs: int, model: str, data: Path, workdir: Path, index: int) -> dict[str, Any]:
    out = workdir / f"run-{index}-procs-{procs}"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in KNOBS.items()]
    command = [
        sys.executable,
        "-m",
        "preftune.cli.main",
        "train",
        "-t",
        str(data),
        "-m",
        model,
        "-o",
        str(out),
    ]
    command += [*flags, "--nproc-per-node", str(procs)]
    started = time.perf_counter()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    wall = time.perf_counter() - started
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["split"] == "train"][1:]  # the first step warms up
    per_step = KNOBS["batch_size"] * KNOBS["gradient_accumulation_steps"]
    seconds = sum(per_step / x["pairs_per_s"] for x in steps)
    return {
        "procs": procs,
        "steps": len(steps) + 1,
        "pairs_per_s": len(steps) * per_step / seconds,
        "wall_s": wall,
        "final_loss": lines[-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=KNOBS["max_length"])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    per_step = KNOBS["batch_size"] * KNOBS["gradient_accumulation_steps"]
    if args.pairs % per_step or args.pairs < 2 * per_step:
        parser.error(f"--pairs must be a multiple of {per_step} (whole steps), at least {2 * per_step}")
    KNOBS["max_length"] = args.max_length
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {args.model}"
    )
    with tempfile.TemporaryDirectory(prefix="preftune-scaling-") as tmp:
        data = _data(args.pairs, Path(tmp))
        results = [run(p, args.model, data, Path(tmp), k) for k, p in enumerate(args.procs)]
    base = results[0]["pairs_per_s"]
    print("| processes | steps | pairs/s (loop) | ratio to 1 | wall s (with load) | final loss |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['procs']} | {r['steps']} | {r['pairs_per_s']:.2f} | {r['pairs_per_s'] / base:.2f} "
            f"| {r['wall_s']:.1f} | {r['final_loss']:.5f} |"
        )


if __name__ == "__main__":
    main()
