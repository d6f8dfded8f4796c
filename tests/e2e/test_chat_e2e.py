"""Chat with the result of a real fine-tuning job on the real server (`preftune serve`):
train a short LoRA DPO job on a tiny model, then talk to it with the `openai` client (plain and
streaming), `preftune chat --compare`, and check that the downloaded adapter and merged model,
loaded by the inference engine on this side, give the server's answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from typer.testing import CliRunner

from helpers.models import install_base_model
from preftune import Client
from preftune.cli.main import app
from preftune.inference.batch import ModelWorker, WorkerConfig
from preftune.inference.prompts import render_prompt
from preftune.inference.types import Finished, SamplingParams, StreamEvent, TextDelta

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 420.0
MESSAGES: list[Any] = [{"role": "user", "content": "Which is better, tea or coffee?"}]


def _local_answer(base: Path, adapter: Path | None, max_tokens: int) -> str:
    """Greedy answer of the engine running here, on downloaded files."""
    worker = ModelWorker(base, torch.device("cpu"), WorkerConfig())
    events: list[StreamEvent] = []
    prompt = render_prompt(worker.tokenizer, MESSAGES)
    worker.submit(
        worker.new_sequence(prompt, SamplingParams(temperature=0), max_tokens, adapter, events.append)
    )
    while worker.has_work():
        worker.step()
    assert isinstance(events[-1], Finished) and events[-1].reason != "error", events[-1]
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.mark.slow
def test_chat_with_a_trained_model(
    client_env: Any, orca_path: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = client_env
    # The tiny model as a named base model of the server.
    base = install_base_model(server.home, tiny_model_dir)
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)
    with Client() as sdk:
        uploaded = sdk.files.upload(orca_path)
        job = sdk.fine_tuning.create(
            training_file=uploaded.id,
            model=str(base),
            lora=True,
            training_method="dpo",
            dpo_beta=0.2,
            learning_rate=5e-2,
            max_steps=3,
            batch_size=2,
            max_length=96,
            merge=True,
            suffix="chat",
        )
        done = sdk.fine_tuning.wait(job.id, poll_interval=1.0, timeout=JOB_TIMEOUT)
        assert done.status == "completed", done.error
        tuned = done.output_name
        assert tuned
        adapter_dir = sdk.fine_tuning.download(job.id, tmp_path / "adapter")
        merged_dir = sdk.fine_tuning.download(job.id, tmp_path / "merged", artifact="merged")

    ids = [m.id for m in oai.models.list()]
    assert "tiny-llama" in ids and tuned in ids

    answer = oai.chat.completions.create(model=tuned, messages=MESSAGES, max_tokens=8, temperature=0)
    assert answer.model == tuned and answer.usage is not None and answer.usage.completion_tokens >= 1
    text = answer.choices[0].message.content
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in oai.chat.completions.create(
            model=tuned, messages=MESSAGES, max_tokens=8, temperature=0, stream=True
        )
        if chunk.choices
    )
    assert streamed == text

    # What people download answers like what the server serves.
    assert _local_answer(tiny_model_dir, adapter_dir, 8) == text
    assert _local_answer(merged_dir, None, 8) == text

    result = CliRunner().invoke(
        app,
        [
            "chat",
            tuned,
            "--compare",
            "tiny-llama",
            "--prompt",
            MESSAGES[0]["content"],
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tiny-llama" in result.output
