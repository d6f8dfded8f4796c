"""`preftune demo`: the main job, end to end, as a user would run it by hand.

Checks and converts the shared sample data, starts the server, splits the Orca DPO pairs (shuffled
with seed 0) into pairs to train on and pairs held out, uploads both, fine-tunes the embedded
SmolLM2-135M-Instruct with LoRA (SimPO by default, DPO or RPO on request) while watching it live,
judges the result on the held-out pairs beside the base model (`preftune eval --remote`), shows the
loss curves, then asks the fine-tuned model and the base model held-out questions side by side.
Each step runs the real `preftune` command it prints, so the demo doubles as a tour.
"""

from __future__ import annotations

import json
import os
import random
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
# The split every held-out figure of the demo (and benchmarks/learning_check.py) uses.
SPLIT_SEED = 0
HELD_OUT_FROM = 200  # shuffled pairs 201-284 are held out
# --method presets: (label, knobs). SimPO moves the model's own per-token preference the most in a
# short CPU run (benchmarks/RESULTS.md, learning_check); DPO and RPO mostly move the reward margin.
METHODS: dict[str, tuple[str, list[str]]] = {
    "simpo": ("SimPO (beta 2.0, gamma 1.0)", ["--dpo-beta", "2.0", "--simpo-gamma", "1.0"]),
    "dpo": ("DPO (beta 0.1)", ["--dpo-beta", "0.1"]),
    "rpo": ("RPO (beta 0.1, alpha 1.0)", ["--dpo-beta", "0.1", "--rpo-alpha", "1.0"]),
}


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


def split_pairs(path: Path, train: int, held_out: int, directory: Path) -> tuple[Path, Path]:
    """Shuffle the file's lines with seed 0; the first `train` are trained on, `held_out` of the pairs
    after position 200 (never among the first 200) are held out. Returns (train file, held-out file)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(SPLIT_SEED).shuffle(lines)
    start = min(HELD_OUT_FROM, max(len(lines) - held_out, 0))
    if train > start:
        raise typer.BadParameter(
            f"at most {start} training pairs (the rest are held out)", param_hint="--train-pairs"
        )
    directory.mkdir(parents=True, exist_ok=True)
    train_file, held_file = directory / "train.jsonl", directory / "held_out.jsonl"
    train_file.write_text("\n".join(lines[:train]) + "\n", encoding="utf-8")
    held_file.write_text("\n".join(lines[start : start + held_out]) + "\n", encoding="utf-8")
    return train_file, held_file


def _held_out_prompts(path: Path, count: int) -> list[str]:
    """User turns of held-out pairs, which the demo run never trains on."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = []
    for line in lines[:count]:
        messages = json.loads(line)["input"]["messages"]
        prompts.append(next(m["content"] for m in reversed(messages) if m["role"] == "user"))
    return prompts


def _loss_chart(job_id: str, env: dict[str, str], target: Path) -> None:
    """The loss curve in the terminal, and the job's curves.png saved beside the adapter."""
    import httpx

    from preftune.cli.fine_tuning import sparkline
    from preftune.client import Client

    with Client(base_url=env["PREFTUNE_BASE_URL"]) as client:
        lines = [p.model_dump() for p in client.fine_tuning.list_metrics(job_id)]
        key = client.api_key
    for name, label in (("loss", "loss"), ("rewards/margins", "reward margin")):
        values = [float(line[name]) for line in lines if isinstance(line.get(name), int | float)]
        if values:
            console.print(
                f"{label:>14} [cyan]{sparkline(values, 60)}[/]  {values[0]:.3f} -> {values[-1]:.3f}"
            )
    response = httpx.get(
        f"{env['PREFTUNE_BASE_URL']}/v1/fine-tunes/{job_id}/curves.png",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    if response.status_code == 200:
        target.mkdir(parents=True, exist_ok=True)
        (target / "curves.png").write_bytes(response.content)
        console.print(f"curves (loss, accuracy, margin; train and eval): {target / 'curves.png'}")


def _headline(figures: dict[str, object]) -> None:
    base = figures.get("base") or {}
    tuned = figures.get("model") or {}
    assert isinstance(base, dict) and isinstance(tuned, dict)
    n = figures.get("n_pairs")
    console.print(
        f"[bold]held-out preference accuracy (per token) {base.get('preference_accuracy_normalized', 0):.2f} -> "
        f"{tuned.get('preference_accuracy_normalized', 0):.2f}[/] on {n} pairs it never trained on "
        f"(summed log-probs: {base.get('preference_accuracy', 0):.2f} -> {tuned.get('preference_accuracy', 0):.2f}; "
        f"held-out DPO loss {base.get('loss', 0):.3f} -> {tuned.get('loss', 0):.3f})"
    )


def demo(
    data: Path = typer.Option(ORCA, "--data", help="Preference data to fine-tune on (preftune format)."),
    method: str = typer.Option(
        "simpo", "--method", help="simpo, dpo or rpo (presets of beta, gamma, alpha)."
    ),
    train_pairs: int = typer.Option(
        128, "--train-pairs", min=8, help="Shuffled pairs to train on (one epoch)."
    ),
    held_out: int = typer.Option(64, "--held-out", min=4, help="Pairs held out to judge the result on."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_length: int = typer.Option(
        256, "--max-length", min=64, help="Short, so the demo trains in minutes on a laptop CPU."
    ),
    learning_rate: float = typer.Option(5e-4, "--learning-rate", help="LoRA needs a high rate in few steps."),
    port: int = typer.Option(8600, "--port", help="Server port (another free one if it is taken)."),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the server running at the end."),
    output: Path = typer.Option(Path("demo-output"), "--output", help="Where the adapter is downloaded."),
) -> None:
    """The main job: serve, upload real preference data, fine-tune the embedded model, prove it got better
    on held-out pairs, chat with it."""
    if not data.is_file():
        console.print(f"[red]no sample data at {data}[/]: pass --data FILE (preftune's preference format)")
        raise typer.Exit(2)
    if method not in METHODS:
        raise typer.BadParameter(f"one of {', '.join(METHODS)}", param_hint="--method")
    method_label, method_flags = METHODS[method]
    steps = -(-train_pairs // batch_size)
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

        _step(
            f"4. Split and upload: {train_pairs} shuffled pairs to train on, {held_out} held out (never trained on)"
        )
        train_file, held_file = split_pairs(data, train_pairs, held_out, settings.home / "demo-data")
        uploaded = _run_json(["files", "upload", str(train_file), "--json"], env)
        file_id = str(uploaded["id"])
        console.print(f"{file_id}: {uploaded.get('status')}, {uploaded.get('n_examples')} examples")
        held = _run_json(["files", "upload", str(held_file), "--json"], env)
        held_id = str(held["id"])
        console.print(f"{held_id}: {held.get('status')}, {held.get('n_examples')} held-out examples")

        _step(
            f"5. Fine-tune {DEFAULT_MODEL} with {method_label} + LoRA ({steps} steps of {batch_size} pairs)"
        )
        job = _run_json(
            [
                "fine-tuning", "create", "--training-file", file_id, "--validation-file", held_id,
                "--model", DEFAULT_MODEL, "--lora", "--training-method", "dpo", *method_flags,
                "--batch-size", str(batch_size), "--max-length", str(max_length),
                "--learning-rate", str(learning_rate), "--warmup-ratio", "0.1", "--n-epochs", "1",
                "--n-evals", "2", "--n-checkpoints", "1", "--suffix", "demo", "--json",
            ],
            env,
        )  # fmt: skip
        job_id = str(job["id"])
        _run(["fine-tuning", "watch", job_id], env)
        finished = _run_json(["fine-tuning", "retrieve", job_id, "--json"], env)
        model_name = str(finished.get("output_name"))
        target = output / job_id
        if target.exists():
            shutil.rmtree(target)

        _step("6. Did it get better? The base model and the tuned one on the held-out pairs")
        eval_json = target / "eval.json"
        target.mkdir(parents=True, exist_ok=True)
        _run(
            [
                "eval",
                model_name,
                held_id,
                "--remote",
                "--max-length",
                str(max_length),
                "--json",
                str(eval_json),
            ],
            env,
        )
        _headline(json.loads(eval_json.read_text(encoding="utf-8")))

        _step("7. The curves")
        _loss_chart(job_id, env, target)

        _step("8. Download the adapter (PEFT format)")
        _run(["fine-tuning", "download", job_id, "-o", str(target / "adapter")], env)

        _step("9. Ask the fine-tuned model and the base model the same held-out questions")
        for prompt in _held_out_prompts(held_file, 2):
            _run(
                ["chat", model_name, "--compare", DEFAULT_MODEL, "--prompt", prompt, "--max-tokens", "64",
                 "--temperature", "0"],
                env,
                check=False,
            )  # fmt: skip

        console.rule("[bold green]done")
        console.print(f"fine-tuned model: [bold]{model_name}[/]")
        console.print(
            f"adapter: {(target / 'adapter').resolve()}  (load with peft.PeftModel.from_pretrained)"
        )
        console.print(f"held-out figures: {eval_json.resolve()}")
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
