"""The official `fireworks-ai` 1.2.30 SDK, unchanged, against the real server (one runner) with only
the base URL, key and account changed: a dataset created with its own id, uploaded and READY, a
DPO job to JOB_STATE_COMPLETED, its output model, a deployment of it, and chat with the
fine-tuned model through the SDK and through Fireworks' `/inference/v1/chat/completions`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fireworks
import httpx
import pytest

from helpers.server import ServeProcess

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 420.0


@pytest.mark.slow
def test_fireworks_dataset_dpo_job_deployment_and_chat(
    server: ServeProcess, tiny_model_dir: Path, tmp_path: Path
) -> None:
    keys = httpx.get(f"{server.base_url}/v1/keys", headers={"Authorization": f"Bearer {server.api_key}"})
    account = keys.json()["data"][0]["owner_id"]
    client = fireworks.Fireworks(
        api_key=server.api_key, account_id=account, base_url=server.base_url, max_retries=0
    )

    rows = [
        {
            "input": {
                "messages": [
                    {"role": "system", "content": "Answer."},
                    {"role": "user", "content": f"{i}+{i}?"},
                ]
            },
            "preferred_output": [{"role": "assistant", "content": f"{2 * i}"}],
            "non_preferred_output": [{"role": "assistant", "content": "?"}],
        }
        for i in range(8)
    ]
    data = tmp_path / "fw-pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dataset_id = f"fw-pairs-{int(time.time())}"
    assert client.datasets.create(dataset_id=dataset_id, dataset={"example_count": "8"}).state == "UPLOADING"
    client.datasets.upload(dataset_id, file=data)
    assert client.datasets.get(dataset_id).state == "READY"

    job = client.dpo_jobs.create(
        dataset=f"accounts/{account}/datasets/{dataset_id}",
        training_config={
            "base_model": str(tiny_model_dir),
            "epochs": 1,
            "learning_rate": 1e-3,
            "lora_rank": 4,
            "max_context_length": 64,
            "batch_size_samples": 4,
        },
        loss_config={"method": "DPO", "dpo": {"beta": 0.1}},
    )
    assert job.name is not None
    job_id = job.name.rsplit("/", 1)[-1]
    seen = []
    deadline = time.monotonic() + JOB_TIMEOUT
    while (state := client.dpo_jobs.get(job_id).state) not in ("JOB_STATE_COMPLETED", "JOB_STATE_FAILED"):
        seen.append(state)
        assert time.monotonic() < deadline, f"still {state}"
        time.sleep(1.0)
    assert state == "JOB_STATE_COMPLETED", server.log()[-3000:]
    assert set(seen) <= {"JOB_STATE_VALIDATING", "JOB_STATE_PENDING", "JOB_STATE_RUNNING"}

    done = client.dpo_jobs.get(job_id)
    assert done.training_config is not None and done.training_config.output_model
    model_name = done.training_config.output_model
    model = client.models.get(model_name.rsplit("/", 1)[-1])
    assert model.name == model_name and model.state == "READY"

    deployment = client.deployments.create(base_model=model_name)
    assert deployment.name is not None
    deployment_id = deployment.name.rsplit("/", 1)[-1]
    deadline = time.monotonic() + 120
    while (state := client.deployments.get(deployment_id).state) != "READY":
        assert state in ("CREATING", "READY"), state
        assert time.monotonic() < deadline
        time.sleep(0.5)

    reply = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "1+1?"}], max_tokens=4, temperature=0
    )
    answer = reply.to_dict()
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["model"].startswith("ft:")

    # The inference address Fireworks' REST users call, with the deployment-qualified model name.
    rest = httpx.post(
        f"{server.base_url}/inference/v1/chat/completions",
        headers={"Authorization": f"Bearer {server.api_key}"},
        json={
            "model": f"{model_name}#accounts/{account}/deployments/{deployment_id}",
            "messages": [{"role": "user", "content": "2+2?"}],
            "max_tokens": 4,
        },
        timeout=120,
    )
    assert rest.status_code == 200, rest.text
    assert rest.json()["choices"][0]["message"]["content"] is not None

    # An unknown model is the SDK's own 404.
    with pytest.raises(fireworks.NotFoundError):
        client.chat.completions.create(
            model=f"accounts/{account}/models/ft-000000000000000000000000",
            messages=[{"role": "user", "content": "x"}],
        )
    client.deployments.delete(deployment_id)
