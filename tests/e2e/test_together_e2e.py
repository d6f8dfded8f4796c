"""The official `together` 3.1.1 SDK and `together` CLI, unchanged, against the real server (one
runner) with only the base URL and key changed: a DPO LoRA job from upload to completion, chat with
its model, its events, checkpoints and metrics, the adapter downloaded (PEFT files in the tar),
continued training from a checkpoint, and the CLI's whole preference flow through `subprocess`."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import together

from helpers.server import ServeProcess

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 420.0


def _pairs(path: Path, n: int) -> Path:
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"{2 * i}."}],
            "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _wait(client: together.Together, job_id: str) -> Any:
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        job = client.fine_tuning.retrieve(job_id)
        if job.status in ("completed", "error", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(1.0)


def _tar_names(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {Path(m.name).name for m in tar.getmembers()}


@pytest.mark.slow
def test_together_sdk_dpo_lora_to_completion_download_and_continue(
    server: ServeProcess, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = together.Together(api_key=server.api_key, base_url=server.base_url, max_retries=0)
    uploaded = client.files.upload(file=_pairs(tmp_path / "pairs.jsonl", 8), purpose="fine-tune", check=True)
    assert uploaded.processing_status == "COMPLETED"

    model = str(tiny_model_dir)
    job = client.fine_tuning.create(
        training_file=uploaded.id,
        model=model,
        validation_file="",
        n_epochs=1,
        n_checkpoints=2,
        batch_size=4,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        min_lr_ratio=0.0,
        warmup_ratio=0.0,
        max_seq_length=64,
        packing=True,
        lora=True,
        lora_r=4,
        lora_alpha=8,
        training_method="dpo",
        dpo_beta=0.2,
        dpo_normalize_logratios_by_length=False,
        rpo_alpha=0.1,
        random_seed=3,
        suffix="tg-e2e",
        early_stopping_enabled=False,
    )
    assert job.id.startswith("ft-")
    done = _wait(client, job.id)
    assert done.status == "completed", server.log()[-3000:]
    assert done.x_model_output_name and done.x_model_output_name.startswith("ft:")

    # Chat with the fine-tuned model through the same SDK (the OpenAI-shaped chat route).
    reply = client.chat.completions.create(
        model=done.x_model_output_name, messages=[{"role": "user", "content": "1 plus 1?"}], max_tokens=4
    )
    assert reply.choices and reply.choices[0].message and reply.choices[0].message.role == "assistant"
    assert reply.model == done.x_model_output_name

    events = client.fine_tuning.list_events(job.id).data
    types = [e.type for e in events]
    assert types[0] == "job_pending" and types[-1] == "job_complete", types
    assert "training_start" in types and "checkpoint_save" in types
    assert all(e.object == "fine-tune-event" and e.level in ("info", "warning") for e in events)

    checkpoints = client.fine_tuning.list_checkpoints(job.id).data
    assert checkpoints[0].checkpoint_type == "Final" and checkpoints[0].path == job.id
    steps = [c.step for c in checkpoints[1:]]
    assert steps and all(isinstance(s, int) for s in steps)
    metrics = client.fine_tuning.list_metrics(job.id).metrics or []
    assert metrics and "loss" in metrics[0] and "global_step" in metrics[0]

    adapter = client.fine_tuning.content(ft_id=job.id, checkpoint="adapter").read()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= _tar_names(adapter)
    intermediate = client.fine_tuning.content(
        ft_id=job.id, checkpoint="adapter", checkpoint_step=steps[-1]
    ).read()
    assert "adapter_config.json" in _tar_names(intermediate)

    # Continued training from a checkpoint, as Together's SDK sends it: no model, `ft-…:STEP`.
    again = client.fine_tuning.create(
        training_file=uploaded.id,
        from_checkpoint=f"{job.id}:{steps[-1]}",
        training_method="dpo",
        n_epochs=1,
        batch_size=4,
        max_seq_length=64,
        lora=True,
        lora_r=4,
        lora_alpha=8,
    )
    assert again.model == model and again.from_checkpoint == f"{job.id}:{steps[-1]}"
    finished = _wait(client, again.id)
    assert finished.status == "completed", server.log()[-3000:]
    assert finished.x_model_output_name != done.x_model_output_name

    # Cancel a queued job; a missing file is the SDK's 404.
    queued = client.fine_tuning.create(
        training_file=uploaded.id, model=model, training_method="dpo", lora=True
    )
    assert client.fine_tuning.cancel(queued.id).status in ("cancel_requested", "cancelled")
    with pytest.raises(together.NotFoundError):
        client.fine_tuning.create(training_file="file-nope", model=model, training_method="dpo", lora=True)


def _cli(server: ServeProcess, home: Path, *args: str, cwd: Path | None = None, ok: bool = True) -> str:
    together_bin = shutil.which("together", path=str(Path(sys.executable).parent))
    assert together_bin, "the together CLI is not installed (pip install together==3.1.1)"
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "TOGETHER_API_KEY": server.api_key,
        "TOGETHER_BASE_URL": server.base_url,
        "TOGETHER_TELEMETRY_DISABLED": "1",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [together_bin, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode == 0) == ok, (
        f"together {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout if ok else done.stdout + done.stderr


@pytest.mark.slow
def test_together_cli_preference_flow(server: ServeProcess, tiny_model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "cli-home"
    home.mkdir()
    data = _pairs(tmp_path / "cli-pairs.jsonl", 8)
    uploaded = json.loads(_cli(server, home, "--json", "files", "upload", str(data)))
    file_id = uploaded["id"]
    assert file_id.startswith("file-")

    # `create` prints its report as text (it has no JSON output): the job id is in it.
    created = _cli(
        server,
        home,
        "fine-tuning",
        "create",
        "--training-file",
        file_id,
        "--model",
        str(tiny_model_dir),
        "--training-method",
        "dpo",
        "--dpo-beta",
        "0.2",
        "--lora",
        "--lora-r",
        "4",
        "--batch-size",
        "4",
        "--max-seq-length",
        "64",
        "--suffix",
        "cli",
        "--confirm",
    )
    found = re.search(r"submitted.*?(ft-[0-9a-f]+)", created, re.S)
    assert found, created
    job_id = found.group(1)
    client = together.Together(api_key=server.api_key, base_url=server.base_url, max_retries=0)
    method = client.fine_tuning.retrieve(job_id).training_method
    assert method is not None and method.model_dump()["dpo_beta"] == 0.2
    assert _wait(client, job_id).status == "completed", server.log()[-3000:]

    retrieved = json.loads(_cli(server, home, "--json", "fine-tuning", "retrieve", job_id))
    assert retrieved["status"] == "completed" and retrieved["model_output_name"].startswith("ft:")
    listed = json.loads(_cli(server, home, "--json", "fine-tuning", "list"))
    assert job_id in [j["id"] for j in listed]
    events = _cli(server, home, "fine-tuning", "list-events", job_id)
    assert "job_complete" in events or "Job completed" in events
    checkpoints = json.loads(_cli(server, home, "--json", "fine-tuning", "list-checkpoints", job_id))
    assert checkpoints[0]["checkpoint_type"] == "Final"

    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    saved = json.loads(
        _cli(
            server,
            home,
            "--json",
            "fine-tuning",
            "download",
            job_id,
            "--checkpoint-type",
            "adapter",
            cwd=out_dir,
        )
    )
    written = (
        Path(saved["filename"]) if Path(saved["filename"]).is_absolute() else out_dir / saved["filename"]
    )
    assert "adapter_config.json" in _tar_names(written.read_bytes())

    # Bad input through the CLI: an unknown model is refused with the server's words, nothing created.
    before = len(client.fine_tuning.list().data)
    refused = _cli(
        server,
        home,
        "fine-tuning",
        "create",
        "--training-file",
        file_id,
        "--model",
        "no-such-model",
        "--training-method",
        "dpo",
        "--lora",
        "--confirm",
        ok=False,
    )
    assert "no-such-model" in refused
    assert len(client.fine_tuning.list().data) == before

    queued = client.fine_tuning.create(
        training_file=file_id, model=str(tiny_model_dir), training_method="dpo", lora=True
    )
    cancelled = json.loads(_cli(server, home, "--json", "fine-tuning", "cancel", queued.id))
    assert cancelled["status"] in ("cancel_requested", "cancelled")
