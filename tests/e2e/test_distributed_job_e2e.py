"""A 2-process job end to end through the real server: upload, create with `resources`, watch
with the CLI, download the adapter (written once, by rank 0) and load it with PEFT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from preftune import Client
from preftune.cli.main import app

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_a_two_process_job_through_the_api(
    client_env: Any, orca_path: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = Client(base_url=client_env.base_url, api_key=client_env.api_key)
    uploaded = client.files.upload(orca_path)
    job = client.fine_tuning.create(
        training_file=uploaded.id,
        model=str(tiny_model_dir),
        resources={"processes_per_node": 2},
        batch_size=2,
        max_steps=3,
        max_length=64,
    )
    assert job.resources == {"processes_per_node": 2, "nodes": 1, "launcher": "torchrun", "strategy": "auto"}

    watched = CliRunner().invoke(app, ["fine-tuning", "watch", job.id, "--json", "--interval", "1"])
    assert watched.exit_code == 0, watched.output
    assert '"status": "completed"' in watched.output

    done = client.fine_tuning.retrieve(job.id)
    assert done.status == "completed" and done.resources["processes_per_node"] == 2
    starts = [e for e in client.fine_tuning.list_events(job.id) if e.type == "TRAINING_START"]
    assert starts[0].data["world_size"] == 2 and starts[0].data["strategy"] == "ddp"
    steps = [m.step for m in client.fine_tuning.list_metrics(job.id)]
    assert steps == [1, 2, 3]  # one line a step: rank 0 alone reports

    adapter = client.fine_tuning.download(job.id, tmp_path / "adapter")
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert any("lora_" in name for name, _ in model.named_parameters())
