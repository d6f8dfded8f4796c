"""Validation speed and memory: preftune's `validate_file` against a naive json.loads + pydantic loop.

Generates a preference file of N examples (default 3,000,000: the largest data set allowed),
then validates it twice, each run in its own child process so that each peak RSS is its own:

- preftune: `preftune.data.validate_file` (msgspec typed fast path, streaming, duplicate check);
- naive:    `json.loads` each line + a pydantic model of the same rules (the obvious way).

Prints MB/s, examples/s and peak RSS for both, and the speed ratio.

    .venv/bin/python benchmarks/validate_speed.py            # 3M examples (~1 GB file)
    .venv/bin/python benchmarks/validate_speed.py --n 200000 # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS = [
    "the French Revolution",
    "photosynthesis",
    "binary search",
    "the Krebs cycle",
    "TCP handshakes",
    "Roman aqueducts",
    "gradient descent",
    "plate tectonics",
]


def generate(path: Path, n: int) -> None:
    """Realistic rows (~500 bytes: system + user, two answers), each distinct."""
    import msgspec

    encode = msgspec.json.encode
    with open(path, "wb") as f:
        batch: list[bytes] = []
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            row = {
                "input": {
                    "messages": [
                        {"role": "system", "content": "You are a patient tutor. Answer in two sentences."},
                        {
                            "role": "user",
                            "content": f"Question {i}: explain {topic} to a curious twelve-year-old.",
                        },
                    ]
                },
                "preferred_output": [
                    {
                        "role": "assistant",
                        "content": f"{topic.capitalize()} is easier than it sounds (#{i}). Think of it as a "
                        "story with a beginning, a middle and an end.",
                    }
                ],
                "non_preferred_output": [
                    {"role": "assistant", "content": f"Look up {topic} yourself. ({i})"}
                ],
            }
            batch.append(encode(row))
            if len(batch) == 10_000:
                f.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            f.write(b"\n".join(batch) + b"\n")


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_preftune(path: Path) -> dict[str, object]:
    from preftune.data import validate_file

    start, cpu = time.perf_counter(), time.process_time()
    report = validate_file(path)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "examples": report.n_valid,
        "ok": report.ok,
        "errors": report.n_errors_total,
    }


def run_naive(path: Path) -> dict[str, object]:
    from typing import Annotated, Literal

    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    class Message(BaseModel):
        model_config = ConfigDict(extra="forbid")
        role: Literal["system", "user", "assistant"]
        content: Annotated[str, Field(min_length=1)]

    class Answer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        role: Literal["assistant"]
        content: Annotated[str, Field(min_length=1)]

    class Input(BaseModel):
        model_config = ConfigDict(extra="forbid")
        messages: Annotated[list[Message], Field(min_length=1)]

    class Row(BaseModel):
        model_config = ConfigDict(extra="forbid")
        input: Input
        preferred_output: Annotated[list[Answer], Field(min_length=1, max_length=1)]
        non_preferred_output: Annotated[list[Answer], Field(min_length=1, max_length=1)]

    start, cpu = time.perf_counter(), time.process_time()
    valid = errors = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                Row.model_validate(json.loads(line))
                valid += 1
            except (ValueError, ValidationError):
                errors += 1
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "examples": valid,
        "ok": errors == 0,
        "errors": errors,
    }


def child(kind: str, path: Path) -> None:
    result = run_preftune(path) if kind == "preftune" else run_naive(path)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def measure(kind: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3_000_000, help="examples in the generated file")
    parser.add_argument(
        "--file", type=Path, default=None, help="validate this file instead of generating one"
    )
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory(prefix="validate_speed-") as tmp:
        path = args.file or Path(tmp) / "bench.jsonl"
        if args.file is None:
            start = time.perf_counter()
            generate(path, args.n)
            print(f"generated {args.n:,} examples in {time.perf_counter() - start:.1f}s")
        size_mb = os.path.getsize(path) / 1e6
        print(f"file: {size_mb:,.1f} MB; machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
        results = {kind: measure(kind, path) for kind in ("preftune", "naive")}
    # CPU seconds are the fair measure on a shared machine (wall time includes waiting for a core);
    # both are printed.
    print(
        f"{'':10} {'wall s':>8} {'CPU s':>8} {'MB/s':>8} {'examples/s':>12} {'peak RSS MB':>12} {'ok':>4}"
        "   (MB/s and examples/s per CPU second)"
    )
    for kind, r in results.items():
        cpu = r["cpu_seconds"]
        print(
            f"{kind:10} {r['seconds']:8.2f} {cpu:8.2f} {size_mb / cpu:8.1f} {r['examples'] / cpu:12,.0f} "
            f"{r['peak_rss_mb']:12.1f} {r['ok']!s:>4}"
        )
    ratio = results["naive"]["cpu_seconds"] / results["preftune"]["cpu_seconds"]
    wall_ratio = results["naive"]["seconds"] / results["preftune"]["seconds"]
    print(
        f"speed ratio preftune / naive: {ratio:.2f}x CPU, {wall_ratio:.2f}x wall (target >= 3x); "
        f"preftune peak RSS {results['preftune']['peak_rss_mb']:.0f} MB (target < 200 MB)"
    )


if __name__ == "__main__":
    main()
