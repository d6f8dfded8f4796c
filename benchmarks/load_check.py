"""Load check: many clients polling job status while files upload and chats stream, against one server.

Starts `preftune serve` on a free loopback port (or uses --base-url/--api-key), creates a
job to poll, then for a bounded time runs
  - 100 concurrent clients polling GET /v1/fine-tunes/{id} as fast as answers come,
  - 20 concurrent uploaders, each uploading preference files of varied sizes and reading
    every one back, checking the server's sha256 and the downloaded bytes' sha256, and
  - 8 concurrent streaming chats (`stream: true`, a tiny model imported by name), each
    checking that its stream ends with `data: [DONE]`.
A 429 (the per-key rate and concurrent-upload limits) is deliberate, not an error: the client
waits its Retry-After and counts it. Prints requests/s, p50/p99 latency per kind, the 429s,
the error count (must be 0) and whether every upload's sha256 matched. Exit status 1 if any
error or mismatch.

    .venv/bin/python benchmarks/load_check.py --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# A busy machine can take a while to import torch and migrate the database.
STARTUP_SECONDS = 240
ORCA = Path(__file__).resolve().parents[2] / "shared" / "data" / "orca_dpo_pairs" / "orca_dpo_pairs.jsonl"


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    uploads: int = 0
    throttled: dict[str, int] = field(default_factory=dict)
    chats: int = 0
    sha_mismatches: list[str] = field(default_factory=list)

    def record(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)

    async def throttle(self, kind: str, response: httpx.Response) -> bool:
        """True (after waiting Retry-After) if the server deliberately refused with a 429."""
        if response.status_code != 429:
            return False
        self.throttled[kind] = self.throttled.get(kind, 0) + 1
        if "retry-after" not in response.headers:
            self.errors.append(f"{kind}: 429 without Retry-After")
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sample_lines() -> list[str]:
    if ORCA.is_file():
        return [line for line in ORCA.read_text(encoding="utf-8").splitlines() if line.strip()]
    example = {
        "input": {"messages": [{"role": "user", "content": "Say hi."}]},
        "preferred_output": [{"role": "assistant", "content": "Hi!"}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    return [json.dumps(example)] * 10


def _make_payload(lines: list[str], rng: random.Random) -> bytes:
    # Between 3 and ~600 examples: from a few KB to about 1.5 MB.
    count = rng.randint(3, 600)
    return ("\n".join(rng.choice(lines) for _ in range(count)) + "\n").encode()


async def _poller(client: httpx.AsyncClient, job_id: str, stop: float, stats: Stats) -> None:
    while time.monotonic() < stop:
        start = time.perf_counter()
        try:
            response = await client.get(f"/v1/fine-tunes/{job_id}")
            if await stats.throttle("poll", response):
                continue
            if response.status_code != 200:
                stats.errors.append(f"poll: HTTP {response.status_code} {response.text[:200]}")
        except httpx.HTTPError as exc:
            stats.errors.append(f"poll: {exc!r}")
        stats.record("poll", time.perf_counter() - start)


async def _uploader(
    client: httpx.AsyncClient, lines: list[str], seed: int, stop: float, stats: Stats
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        payload = _make_payload(lines, rng)
        digest = hashlib.sha256(payload).hexdigest()
        start = time.perf_counter()
        try:
            response = await client.post(
                "/v1/files",
                files={"file": (f"load-{seed}.jsonl", payload, "application/jsonl")},
                data={"purpose": "fine-tune"},
            )
            if await stats.throttle("upload", response):
                continue
            stats.record("upload", time.perf_counter() - start)
            if response.status_code != 200:
                stats.errors.append(f"upload: HTTP {response.status_code} {response.text[:200]}")
                continue
            body = response.json()
            stats.uploads += 1
            if body.get("sha256") != digest:
                stats.sha_mismatches.append(
                    f"{body.get('id')}: server sha256 {body.get('sha256')} != {digest}"
                )
            start = time.perf_counter()
            content = await client.get(f"/v1/files/{body['id']}/content")
            while await stats.throttle("download", content):
                content = await client.get(f"/v1/files/{body['id']}/content")
            stats.record("download", time.perf_counter() - start)
            if content.status_code != 200:
                stats.errors.append(f"content: HTTP {content.status_code}")
            elif hashlib.sha256(content.content).hexdigest() != digest:
                stats.sha_mismatches.append(f"{body['id']}: downloaded bytes differ from the upload")
        except httpx.HTTPError as exc:
            stats.errors.append(f"upload: {exc!r}")


async def _chatter(client: httpx.AsyncClient, model: str, seed: int, stop: float, stats: Stats) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Tell me about load number {seed}."}],
        "max_tokens": 32,
        "stream": True,
        "temperature": 0,
    }
    while time.monotonic() < stop:
        start = time.perf_counter()
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code == 429:
                    await response.aread()
                    await stats.throttle("chat", response)
                    continue
                if response.status_code != 200:
                    stats.errors.append(
                        f"chat: HTTP {response.status_code} {(await response.aread())[:200]!r}"
                    )
                    continue
                first: float | None = None
                last = ""
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        if first is None:
                            first = time.perf_counter() - start
                        last = line
                if last != "data: [DONE]":
                    stats.errors.append(f"chat: stream ended with {last[:200]!r}")
                    continue
            stats.chats += 1
            stats.record("chat", time.perf_counter() - start)
            if first is not None:
                stats.record("chat_ttfb", first)
        except httpx.HTTPError as exc:
            stats.errors.append(f"chat: {exc!r}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(
    base_url: str,
    api_key: str,
    model: str,
    seconds: float,
    pollers: int,
    uploaders: int,
    chats: int = 0,
    chat_model: str | None = None,
) -> Stats:
    stats = Stats()
    lines = _sample_lines()
    headers = {"Authorization": f"Bearer {api_key}"}
    limits = httpx.Limits(max_connections=pollers + uploaders + chats + 5)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60, limits=limits) as client:
        seed_file = await client.post(
            "/v1/files",
            files={"file": ("seed.jsonl", "\n".join(lines[:20]).encode(), "application/jsonl")},
            data={"purpose": "fine-tune"},
        )
        seed_file.raise_for_status()
        job = await client.post(
            "/v1/fine-tunes",
            json={
                "training_file": seed_file.json()["id"],
                "model": model,
                "max_steps": 2,
                "batch_size": 2,
                "max_length": 64,
            },
        )
        if job.status_code != 200:
            raise SystemExit(f"cannot create the job to poll: {job.text}")
        job_id = job.json()["id"]
        stop = time.monotonic() + seconds
        started = time.perf_counter()
        await asyncio.gather(
            *[_poller(client, job_id, stop, stats) for _ in range(pollers)],
            *[_uploader(client, lines, seed, stop, stats) for seed in range(uploaders)],
            *[_chatter(client, chat_model or model, seed, stop, stats) for seed in range(chats)],
        )
        stats.record("_wall", time.perf_counter() - started)
    return stats


def report(stats: Stats, seconds: float) -> bool:
    wall = stats.latencies.pop("_wall", [seconds])[0]
    total = sum(len(v) for v in stats.latencies.values())
    print(f"duration {wall:.1f}s, {total} requests, {total / wall:.1f} requests/s")
    for kind, values in sorted(stats.latencies.items()):
        print(
            f"  {kind:8s} n={len(values):6d}  {len(values) / wall:7.1f}/s  p50 {statistics.median(values) * 1000:7.1f} ms"
            f"  p99 {_percentile(values, 0.99) * 1000:7.1f} ms"
        )
    print(
        f"uploads {stats.uploads}, chats {stats.chats}, deliberate 429s {dict(sorted(stats.throttled.items()))}, "
        f"sha256 mismatches {len(stats.sha_mismatches)}, errors {len(stats.errors)}"
    )
    for line in (stats.errors + stats.sha_mismatches)[:10]:
        print("  " + line)
    return (
        not stats.errors
        and not stats.sha_mismatches
        and (stats.uploads > 0 or "upload" not in stats.latencies)
    )


def _start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PREFTUNE_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for var in ("PREFTUNE_API_KEY", "PREFTUNE_BASE_URL", "PREFTUNE_DATABASE_URL"):
        env.pop(var, None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "preftune.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "0",
        ],
        env=env,
        stdout=(home / "server.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {(home / 'server.log').read_text()[-3000:]}")
        try:
            if (
                httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200
                and (home / "credentials").is_file()
            ):
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(
        f"server did not start within {STARTUP_SECONDS}s: {(home / 'server.log').read_text()[-3000:]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="How long to run the load.")
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--uploaders", type=int, default=20)
    parser.add_argument("--chats", type=int, default=8, help="Concurrent streaming chats.")
    parser.add_argument("--base-url", help="Use a running server instead of starting one.")
    parser.add_argument("--api-key", help="Key for --base-url.")
    parser.add_argument("--model", help="Model of the polled job (default: a tiny model built here).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="preftune-load-") as tmp:
        process = None
        base_url, api_key, model = args.base_url, args.api_key, args.model
        if model is None:
            from preftune.training.tiny import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        if base_url is None:
            home = Path(tmp) / "home"
            home.mkdir()
            port = _free_port()
            # No runner: the polled job stays queued, so the load measures the API, not training.
            # The chats' model, imported under a name as `preftune models import` does.
            (home / "models").mkdir()
            (home / "models" / "tiny").symlink_to(Path(model), target_is_directory=True)
            process = _start_server(home, port)
            base_url = f"http://127.0.0.1:{port}"
            api_key = (home / "credentials").read_text().splitlines()[0].strip()
        try:
            stats = asyncio.run(
                run(
                    base_url,
                    api_key or "",
                    model,
                    args.seconds,
                    args.pollers,
                    args.uploaders,
                    args.chats,
                    "tiny" if args.base_url is None else model,
                )
            )
        finally:
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
    ok = report(stats, args.seconds)
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
