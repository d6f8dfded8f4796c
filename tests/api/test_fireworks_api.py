"""The official `fireworks-ai` SDK (1.2.30, unchanged) against the real app on a loopback port,
without a runner: datasets (user-chosen ids, both upload paths, UPLOADING until READY, Fireworks'
rules), DPO jobs (create/get/list/cancel/delete), the account bound to the key, and bad inputs
raising the SDK's own exceptions with nothing created. (Training to JOB_STATE_COMPLETED, the
deployment and chat: tests/e2e/test_fireworks_e2e.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fireworks
import httpx
import pytest

from helpers.models import install_base_model
from helpers.server import self_signed_cert, serve_in_thread
from preftune.api.app import create_app
from preftune.config import Settings
from preftune.service import keys as key_service


def _pair(i: int, turns: int = 1) -> dict[str, Any]:
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{i} + {i}?"}]
    if turns > 1:
        prompt += [{"role": "assistant", "content": "Hm."}, {"role": "user", "content": "Well?"}]
    return {
        "input": {"messages": prompt},
        "preferred_output": [{"role": "assistant", "content": f"{2 * i}."}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@dataclass
class Server:
    base_url: str
    key: str
    account: str
    other_key: str
    other_account: str
    tmp: Path

    def client(self, key: str | None = None, account: str | None = None) -> fireworks.Fireworks:
        return fireworks.Fireworks(
            api_key=key or self.key, account_id=account or self.account, base_url=self.base_url, max_retries=0
        )


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Server]:
    home = tmp_path / "home"
    install_base_model(home, tiny_model_dir)
    app = create_app(Settings(home=home, allow_on_demand_load=False))
    with serve_in_thread(app) as base_url:
        with app.state.db.session() as session:
            alice = key_service.create_owner(session, "alice")
            _, key = key_service.create_key(session, alice.id, "a")
            bob = key_service.create_owner(session, "bob")
            _, other = key_service.create_key(session, bob.id, "b")
        yield Server(base_url, key, alice.id, other, bob.id, tmp_path)


def test_datasets_both_upload_paths_then_dpo_jobs(server: Server) -> None:
    client = server.client()
    data = _write(server.tmp / "pairs.jsonl", [_pair(i) for i in range(6)])

    created = client.datasets.create(
        dataset_id="my-pairs", dataset={"display_name": "My pairs", "example_count": "6"}
    )
    assert created.name == f"accounts/{server.account}/datasets/my-pairs" and created.state == "UPLOADING"
    uploaded = client.datasets.upload("my-pairs", file=data)
    assert uploaded.bytes == data.stat().st_size
    ready = client.datasets.get("my-pairs")
    assert ready.state == "READY" and ready.example_count == "6" and ready.display_name == "My pairs"

    # The large-file path: signed URL, PUT without credentials, validateUpload.
    client.datasets.create(dataset_id="big-pairs", dataset={"example_count": "6"})
    size = str(data.stat().st_size)
    endpoint = client.datasets.get_upload_endpoint("big-pairs", filename_to_size={"pairs.jsonl": size})
    url = (endpoint.filename_to_signed_urls or {})["pairs.jsonl"]
    assert server.key not in url
    put = httpx.put(url, content=data.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    assert put.status_code == 200
    assert client.datasets.get("big-pairs").state == "UPLOADING"  # bytes in, not validated yet
    client.datasets.validate_upload("big-pairs", body={})
    assert client.datasets.get("big-pairs").state == "READY"
    assert httpx.put(url, content=data.read_bytes()).status_code == 409  # the URL was single-use

    names = [d.name.rsplit("/", 1)[-1] for d in client.datasets.list() if d.name]
    assert names == ["big-pairs", "my-pairs"]

    job = client.dpo_jobs.create(
        dataset=f"accounts/{server.account}/datasets/my-pairs",
        display_name="first",
        training_config={
            "base_model": "tiny-llama",
            "epochs": 2,
            "learning_rate": 1e-4,
            "lora_rank": 8,
            "max_context_length": 128,
            "batch_size_samples": 2,
        },
        loss_config={"method": "DPO", "dpo": {"beta": 0.2}},
    )
    assert job.name and job.name.startswith(f"accounts/{server.account}/dpoJobs/")
    assert job.state in ("JOB_STATE_VALIDATING", "JOB_STATE_PENDING")
    job_id = job.name.rsplit("/", 1)[-1]
    got = client.dpo_jobs.get(job_id)
    assert got.training_config is not None and got.training_config.lora_rank == 8
    assert got.training_config.epochs == 2 and got.training_config.max_context_length == 128
    assert got.training_config.output_model == f"accounts/{server.account}/models/ft-{job_id}"
    assert got.loss_config is not None and got.loss_config.dpo is not None and got.loss_config.dpo.beta == 0.2
    assert [j.name for j in client.dpo_jobs.list()] == [job.name]
    cancelled: Any = client.dpo_jobs.cancel(job_id, body={})  # the SDK returns the body as a dict
    assert cancelled["state"] == "JOB_STATE_CANCELLED" == client.dpo_jobs.get(job_id).state
    client.dpo_jobs.delete(job_id)

    # The output model is not servable before its job completes.
    with pytest.raises(fireworks.NotFoundError):
        client.models.get(f"ft-{job_id}")
    client.datasets.delete("big-pairs")
    with pytest.raises(fireworks.NotFoundError):
        client.datasets.get("big-pairs")


def test_bad_inputs_are_the_sdks_own_4xx_and_create_nothing(server: Server) -> None:
    client = server.client()
    # Dataset ids follow Fireworks' resource-id rules.
    for bad in ("My-Pairs", "1pairs", "pairs-", "a" * 64, "under_score"):
        with pytest.raises(fireworks.BadRequestError, match="resource id"):
            client.datasets.create(dataset_id=bad, dataset={})
    client.datasets.create(dataset_id="pairs", dataset={})
    with pytest.raises(fireworks.ConflictError):
        client.datasets.create(dataset_id="pairs", dataset={})

    # Fireworks' rules on the rows: one-turn conversations, at least 3 examples, known roles.
    multi = _write(server.tmp / "multi.jsonl", [_pair(i, turns=2) for i in range(4)])
    with pytest.raises(fireworks.BadRequestError, match="one user message"):
        client.datasets.upload("pairs", file=multi)
    few = _write(server.tmp / "few.jsonl", [_pair(0), _pair(1)])
    with pytest.raises(fireworks.BadRequestError, match="at least 3"):
        client.datasets.upload("pairs", file=few)
    malformed = _write(server.tmp / "bad.jsonl", [_pair(0), {"input": "x"}, _pair(2)])
    with pytest.raises(fireworks.BadRequestError, match="line 2"):
        client.datasets.upload("pairs", file=malformed)
    assert client.datasets.get("pairs").state == "UPLOADING"  # still waiting for good bytes

    # A job on a dataset that is not READY, an unknown model, an unsupported field: nothing is created.
    with pytest.raises(fireworks.BadRequestError, match="not READY"):
        client.dpo_jobs.create(dataset="pairs", training_config={"base_model": "tiny-llama"})
    client.datasets.upload("pairs", file=_write(server.tmp / "ok.jsonl", [_pair(i) for i in range(3)]))
    with pytest.raises(fireworks.NotFoundError, match="no-such-model"):
        client.dpo_jobs.create(dataset="pairs", training_config={"base_model": "no-such-model"})
    with pytest.raises(fireworks.BadRequestError, match=r"lossConfig\.method"):
        client.dpo_jobs.create(
            dataset="pairs", training_config={"base_model": "tiny-llama"}, loss_config={"method": "ORPO"}
        )
    with pytest.raises(fireworks.BadRequestError, match="dpo_beta"):
        client.dpo_jobs.create(
            dataset="pairs", training_config={"base_model": "tiny-llama"}, loss_config={"dpo": {"beta": 50}}
        )
    with pytest.raises(fireworks.NotFoundError):
        client.dpo_jobs.create(dataset="missing", training_config={"base_model": "tiny-llama"})
    assert list(client.dpo_jobs.list()) == []

    # The account is the key's: another account's path is a 404, with either key.
    with pytest.raises(fireworks.NotFoundError, match="account"):
        server.client(account=server.other_account).datasets.list()
    with pytest.raises(fireworks.NotFoundError, match="account"):
        server.client(key=server.other_key).datasets.get("pairs")
    assert list(server.client(key=server.other_key, account=server.other_account).datasets.list()) == []
    with pytest.raises(fireworks.AuthenticationError):
        server.client(key="pt-not-a-key").datasets.list()


def test_the_sdks_own_large_file_helper_over_https(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fireworks.lib.dataset_upload.upload_dataset_shards` insists on https upload URLs: behind TLS it
    runs unchanged (get_upload_endpoint, a PUT without credentials, validate_upload)."""
    from fireworks.lib.dataset_upload import upload_dataset_shards

    cert, key_file = self_signed_cert(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    app = create_app(Settings(home=tmp_path / "home", allow_on_demand_load=False))
    with serve_in_thread(app, tls=(cert, key_file)) as base_url:
        with app.state.db.session() as session:
            owner = key_service.create_owner(session, "alice")
            _, key = key_service.create_key(session, owner.id, "a")
        # Closed before the server stops: an open keep-alive TLS connection holds its shutdown 30 s.
        with fireworks.Fireworks(
            api_key=key, account_id=owner.id, base_url=base_url, max_retries=0
        ) as client:
            data = _write(tmp_path / "shard.jsonl", [_pair(i) for i in range(5)])
            client.datasets.create(dataset_id="sharded", dataset={"example_count": "5"})
            upload_dataset_shards(client, "sharded", str(data))
            ready = client.datasets.get("sharded")
            assert ready.state == "READY" and ready.example_count == "5"
