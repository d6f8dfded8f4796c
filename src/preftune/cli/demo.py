"""`preftune demo`: the main job, end to end, as a user would run it by hand.

Checks and converts the shared sample data, starts the server, uploads the Orca DPO pairs,
fine-tunes the embedded SmolLM2-135M-Instruct with DPO + LoRA while watching it live, then
asks the fine-tuned model and the base model the same held-out questions side by side.
Each step runs the real `preftune` command it prints, so the demo doubles as a tour.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console

from preftune.config import Settings
from preftune.contracts.base_models import DEFAULT_MODEL

console = Console(highlight=False)

# src/preftune/cli/demo.py -> the checkout; the shared sample data sits beside it.
REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ORCA = SHARED_DATA / "orca_dpo_pairs" / "orca_dpo_pairs.jsonl"
HH_RLHF = SHARED_DATA / "hh_rlhf_harmless_base" / "test.jsonl.gz"
SERVER_START_SECONDS = 120.0


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def _run(args: list[str], env: dict[str, str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `preftune ARGS` as the user would, showing the command and its live output."""
    console.print(f"[dim]$[/] [bold]preftune {' '.join(args)}[/]")
    result = subprocess.run([sys.executable, "-m", "preftune.cli.main", *args], env=env, text=True)
    if check and result.returncode != 0:
        console.print(f"[red]`preftune {args[0]} ...` failed with exit code {result.returncode}[/]")
        raise typer.Exit(result.returncode)
    return result


def _run_json(args: list[str], env: dict[str, str]) -> dict[str, object]:
    console.print(f"[dim]$[/] [bold]preftune {' '.join(args)}[/]")
    result = subprocess.run(
        [sys.executable, "-m", "preftune.cli.main", *args], env=env, text=True, capture_output=True
    )
    if result.returncode != 0:
        console.print(result.stdout + result.stderr)
        raise typer.Exit(result.returncode)
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _wait_for_server(base_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            console.print(log.read_text(errors="replace")[-4000:])
            raise typer.Exit(1)
        try:
            if httpx.get(f"{base_url}/v1/fine-tunes/spec", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    console.print(f"[red]the server did not answer within {SERVER_START_SECONDS:.0f}s; see {log}[/]")
    raise typer.Exit(1)


def _held_out_prompts(path: Path, count: int) -> list[str]:
    """User turns from the end of the file, which the short demo run never trains on."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = []
    for line in lines[-count:]:
        messages = json.loads(line)["input"]["messages"]
        prompts.append(next(m["content"] for m in reversed(messages) if m["role"] == "user"))
    return prompts


def demo(
    data: Path = typer.Option(ORCA, "--data", help="Preference data to fine-tune on (preftune format)."),
    steps: int = typer.Option(12, "--steps", min=1, help="Optimizer steps of the demo run."),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    max_length: int = typer.Option(
        256, "--max-length", min=64, help="Short, so the demo trains in minutes on a laptop CPU."
    ),
    learning_rate: float = typer.Option(2e-4, "--learning-rate", help="LoRA tolerates a high rate."),
    dpo_beta: float = typer.Option(0.1, "--dpo-beta"),
    port: int = typer.Option(8600, "--port", help="Server port (another free one if it is taken)."),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the server running at the end."),
    output: Path = typer.Option(Path("demo-output"), "--output", help="Where the adapter is downloaded."),
) -> None:
    """The main job: serve, upload real preference data, DPO-fine-tune the embedded model, chat with it."""
    if not data.is_file():
        console.print(f"[red]no sample data at {data}[/]: pass --data FILE (preftune's preference format)")
        raise typer.Exit(2)
    settings = Settings()
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")

    _step("1. Check the data: every problem by line and field, token lengths with the model's template")
    _run(["files", "check", str(data), "--model", DEFAULT_MODEL, "--max-length", str(max_length)], env)

    if HH_RLHF.is_file():
        _step("2. Convert another public format (Anthropic HH-RLHF transcripts) into preftune's")
        with tempfile.TemporaryDirectory() as tmp:
            converted = Path(tmp) / "hh_rlhf.jsonl"
            _run(["data", "convert", "--from", "hh-rlhf", str(HH_RLHF), str(converted)], env, check=False)

    _step("3. Start the server (API, OpenAI-compatible routes, console and one runner)")
    port = _free_port(port)
    base_url = f"http://127.0.0.1:{port}"
    settings.home.mkdir(parents=True, exist_ok=True)
    log = settings.home / "demo-server.log"
    server_cmd = [sys.executable, "-m", "preftune.cli.main", "serve", "--port", str(port), "--workers", "1"]
    console.print(f"[dim]$[/] [bold]preftune serve --port {port} --workers 1[/]  [dim](log: {log})[/]")
    with log.open("wb") as log_file:
        server = subprocess.Popen(server_cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(base_url, server, log)
        env["PREFTUNE_BASE_URL"] = base_url
        console.print(f"serving on {base_url}; console at {base_url}/ ; key in {settings.credentials_path}")

        _step("4. Upload the data: streamed, validated, reported")
        uploaded = _run_json(["files", "upload", str(data), "--json"], env)
        file_id = str(uploaded["id"])
        console.print(f"{file_id}: {uploaded.get('status')}, {uploaded.get('n_examples')} examples")

        _step(f"5. Fine-tune {DEFAULT_MODEL} with DPO + LoRA ({steps} steps of {batch_size} pairs)")
        job = _run_json(
            [
                "fine-tuning", "create", "--training-file", file_id, "--model", DEFAULT_MODEL,
                "--lora", "--training-method", "dpo", "--dpo-beta", str(dpo_beta),
                "--batch-size", str(batch_size), "--max-length", str(max_length),
                "--learning-rate", str(learning_rate), "--max-steps", str(steps),
                "--n-checkpoints", "2", "--suffix", "demo", "--json",
            ],
            env,
        )  # fmt: skip
        job_id = str(job["id"])
        _run(["fine-tuning", "watch", job_id], env)
        finished = _run_json(["fine-tuning", "retrieve", job_id, "--json"], env)
        model_name = str(finished.get("output_name"))

        _step("6. Download the adapter (PEFT format)")
        target = output / job_id
        if target.exists():
            shutil.rmtree(target)
        _run(["fine-tuning", "download", job_id, "-o", str(target)], env)

        _step("7. Ask the fine-tuned model and the base model the same held-out questions")
        for prompt in _held_out_prompts(data, 2):
            _run(
                ["chat", model_name, "--compare", DEFAULT_MODEL, "--prompt", prompt, "--max-tokens", "64",
                 "--temperature", "0"],
                env,
                check=False,
            )  # fmt: skip

        console.rule("[bold green]done")
        console.print(f"fine-tuned model: [bold]{model_name}[/]")
        console.print(f"adapter: {target.resolve()}  (load with peft.PeftModel.from_pretrained)")
        console.print(f"job directory: {settings.jobs_dir / job_id}")
        console.print(f"chat with it: preftune chat {model_name}   (server: {base_url})")
        if keep_serving:
            console.print("the server keeps running; Ctrl-C stops it")
            server.wait()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
