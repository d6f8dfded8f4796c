"""The real server, driven by all three clients around one short DPO job on a tiny model:
the official `openai` client uploads the shared orca sample and creates the job, the
`preftune` CLI watches it to completion, and the SDK reads its events, metrics and
checkpoints and downloads the adapter (also resumed with HTTP Range), which PEFT loads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from typer.testing import CliRunner

from preftune import Client
from preftune.cli.main import app

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 420.0
STEPS = 4


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, f"preftune {' '.join(args)} -> {result.exit_code}\n{result.output}"
    return result.output


def cli_json(*args: str) -> Any:
    return json.loads(cli(*args, "--json"))


def test_one_dpo_job_through_openai_cli_and_sdk(
    client_env: Any, orca_path: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = client_env
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key)
    with orca_path.open("rb") as handle:
        uploaded = oai.files.create(file=handle, purpose="fine-tune")
    assert uploaded.status == "processed" and uploaded.bytes == orca_path.stat().st_size

    job = oai.fine_tuning.jobs.create(
        model=str(tiny_model_dir),
        training_file=uploaded.id,
        suffix="e2e",
        method={
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "beta": 0.2,
                    "n_epochs": 1,
                    "batch_size": 2,
                    "learning_rate_multiplier": 20.0,
                    "max_steps": STEPS,
                    "max_length": 96,
                    "n_checkpoints": 2,
                    "rpo_alpha": 0.5,
                }
            },
        },
    )
    assert job.status in ("queued", "running")

    # The CLI creates a second job with the hosted services' flags, then cancels it.
    second = cli_json(
        "fine-tuning",
        "create",
        "--training-file",
        uploaded.id,
        "--model",
        str(tiny_model_dir),
        "--lora",
        "--training-method",
        "dpo",
        "--dpo-beta",
        "0.3",
        "--simpo-gamma",
        "0.5",
        "--max-steps",
        "2",
        "--suffix",
        "cli",
    )
    assert second["hyperparameters"]["simpo_gamma"] == 0.5 and second["hyperparameters"]["dpo_beta"] == 0.3
    assert cli_json("fine-tuning", "cancel", second["id"])["status"] in ("cancelled", "cancel_requested")

    # The CLI follows the first job live until it completes (exit code 0).
    watched = cli("fine-tuning", "watch", job.id, "--json", "--interval", "1")
    assert '"type": "JOB_COMPLETE"' in watched and '"status": "completed"' in watched

    with Client() as sdk:
        done = sdk.fine_tuning.retrieve(job.id)
        assert done.status == "completed", done.error
        assert done.progress.step == STEPS and done.progress.total_steps == STEPS
        assert done.output_name == f"ft:{tiny_model_dir.name}:e2e:{job.id}"
        assert done.hyperparameters["rpo_alpha"] == 0.5 and done.latest_metrics is not None

        # --- the openai client's views of the finished job --------------------------------
        finished = oai.fine_tuning.jobs.retrieve(job.id)
        assert finished.status == "succeeded" and finished.fine_tuned_model == done.output_name
        oai_events = oai.fine_tuning.jobs.list_events(job.id, limit=100).data
        stamps = [e.created_at for e in oai_events]
        assert stamps == sorted(stamps, reverse=True)
        assert sum(e.type == "metrics" for e in oai_events) == STEPS
        newest_message = next(e for e in oai_events if e.type == "message")
        assert isinstance(newest_message.data, dict) and newest_message.data["type"] == "JOB_COMPLETE"
        first_page = oai.fine_tuning.jobs.list_events(job.id, limit=3)
        assert first_page.has_more
        second_page = oai.fine_tuning.jobs.list_events(job.id, limit=3, after=first_page.data[-1].id)
        assert [e.id for e in second_page.data] == [e.id for e in oai_events[3:6]]
        oai_checkpoints = oai.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in oai_checkpoints] == [STEPS, STEPS // 2]
        assert oai_checkpoints[0].fine_tuned_model_checkpoint.endswith(f":ckpt-step-{STEPS}")

        # --- the SDK's views -----------------------------------------------------------------
        events = list(sdk.fine_tuning.list_events(job.id))
        seqs = [e.seq for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        types = [e.type for e in events]
        assert types[:3] == ["JOB_PENDING", "JOB_QUEUED", "JOB_START"] and types[-1] == "JOB_COMPLETE"
        assert (
            types.index("TRAINING_START") < types.index("CHECKPOINT_SAVE") < types.index("TRAINING_COMPLETE")
        )
        train = [m.model_dump() for m in sdk.fine_tuning.list_metrics(job.id)]
        train = [m for m in train if m.get("split", "train") == "train"]
        assert [m["step"] for m in train] == list(range(1, STEPS + 1))
        assert all("loss" in m and "rewards/accuracies" in m for m in train)
        assert [c.step for c in sdk.fine_tuning.list_checkpoints(job.id)] == [STEPS // 2, STEPS]
        out = sdk.fine_tuning.download(job.id, tmp_path / "adapter")
        assert (out / "adapter_config.json").is_file()

        # An interrupted download resumes from the bytes already on disk (HTTP Range).
        full_tar = httpx.get(
            f"{server.base_url}/v1/fine-tunes/{job.id}/download",
            headers={"Authorization": f"Bearer {server.api_key}"},
            timeout=60,
        ).content
        resumed_dir = tmp_path / "resumed"
        resumed_dir.mkdir()
        (resumed_dir / f".{job.id}-adapter.tar.part").write_bytes(full_tar[:2048])
        statuses: list[tuple[str | None, int]] = []
        hooks = {"response": [lambda r: statuses.append((r.request.headers.get("range"), r.status_code))]}
        with httpx.Client(event_hooks=hooks, timeout=60) as http, Client(http_client=http) as resuming:
            resuming.fine_tuning.download(job.id, resumed_dir)
        assert statuses == [("bytes=2048-", 206)]
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert (resumed_dir / name).read_bytes() == (out / name).read_bytes()
        assert not list(resumed_dir.glob("*.part"))

    # The CLI's views and download give the same files.
    assert cli_json("fine-tuning", "list-events", job.id)["data"][-1]["type"] == "JOB_COMPLETE"
    assert [c["step"] for c in cli_json("fine-tuning", "list-checkpoints", job.id)] == [STEPS // 2, STEPS]
    cli_out = tmp_path / "cli-adapter"
    cli_json("fine-tuning", "download", job.id, "-o", str(cli_out))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (cli_out / name).read_bytes() == (out / name).read_bytes()
    # The live view of a finished job: its final state, loss and reward accuracy, exit code 0.
    live = cli("fine-tuning", "watch", job.id, "--interval", "0.5")
    assert "completed" in live and "loss" in live and "rewards/accuracies" in live and "JOB_COMPLETE" in live
    # A finished job cannot be cancelled: a readable error and exit code 2.
    assert "nothing to cancel" in cli("fine-tuning", "cancel", job.id, code=2)

    _check_range_download(server, job.id)
    _check_adapter_loads_and_was_trained(tiny_model_dir, out)


def _check_range_download(server: Any, job_id: str) -> None:
    url = f"{server.base_url}/v1/fine-tunes/{job_id}/download"
    headers = {"Authorization": f"Bearer {server.api_key}"}
    full = httpx.get(url, headers=headers, timeout=60)
    assert full.status_code == 200 and full.headers["content-type"] == "application/x-tar"
    tail = httpx.get(url, headers={**headers, "Range": "bytes=1000-"}, timeout=60)
    assert tail.status_code == 206
    assert tail.headers["content-range"] == f"bytes 1000-{len(full.content) - 1}/{len(full.content)}"
    assert (
        hashlib.sha256(full.content[:1000] + tail.content).digest() == hashlib.sha256(full.content).digest()
    )


def _check_adapter_loads_and_was_trained(base: Path, adapter: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b, "no LoRA weights in the downloaded adapter"
    # LoRA's B starts at zero: any non-zero value was learned by the job.
    assert any(torch.count_nonzero(p) > 0 for p in lora_b)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_cli_errors_name_the_parameter(client_env: Any, orca_path: Path) -> None:
    uploaded = cli_json("files", "upload", str(orca_path))
    output = cli("fine-tuning", "create", "-t", uploaded["id"], "-m", "no-such-model", code=4)
    assert "[param: model]" in output
    output = cli("fine-tuning", "create", "-t", uploaded["id"], "-m", "x", "--dpo-beta", "-1", code=2)
    assert "dpo_beta" in output
    cli("fine-tuning", "retrieve", "ftjob-missing", code=4)


def test_cli_keys(client_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    created = cli_json("keys", "create", "--name", "laptop")
    assert created["key"].startswith("pt-")
    assert created["id"] in [k["id"] for k in cli_json("keys", "list")]
    assert cli_json("keys", "revoke", created["id"])["revoked_at"] is not None
    monkeypatch.setenv("PREFTUNE_API_KEY", created["key"])
    assert "invalid API key" in cli("files", "list", code=3)
