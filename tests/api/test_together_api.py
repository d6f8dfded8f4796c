"""The official `together` SDK (3.1.1, unchanged) against the real app on a loopback port, without a
runner: the upload handshake and its presigned URL, job creation with Together's nested body,
Together's shapes, ids and states, and bad inputs raising the SDK's own exceptions with nothing
created. (Training to completion, download and continued training: tests/e2e/test_together_e2e.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import together
from together.lib.types.error import FileTypeError

from helpers.models import install_base_model
from helpers.server import serve_in_thread
from preftune.api.app import create_app
from preftune.config import Settings
from preftune.service import keys as key_service
from preftune.service import uploads as upload_service
from preftune.store.db import Database


def _pair(i: int) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}]},
        "preferred_output": [{"role": "assistant", "content": f"{2 * i}."}],
        "non_preferred_output": [{"role": "assistant", "content": "I do not know."}],
    }


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@dataclass
class Server:
    base_url: str
    key: str
    other_key: str
    settings: Settings
    data: Path
    db: Database
    owner_id: str

    def client(self, key: str | None = None) -> together.Together:
        return together.Together(api_key=key or self.key, base_url=self.base_url, max_retries=0)


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Server]:
    home = tmp_path / "home"
    install_base_model(home, tiny_model_dir)
    settings = Settings(home=home, allow_on_demand_load=False, max_upload_bytes=64 * 1024)
    app = create_app(settings)
    with serve_in_thread(app) as base_url:
        with app.state.db.session() as session:
            alice = key_service.create_owner(session, "alice")
            _, key = key_service.create_key(session, alice.id, "a")
            bob = key_service.create_owner(session, "bob")
            _, other = key_service.create_key(session, bob.id, "b")
        data = _write(tmp_path / "pairs.jsonl", [_pair(i) for i in range(8)])
        yield Server(base_url, key, other, settings, data, app.state.db, alice.id)


def test_upload_handshake_with_check_then_create_retrieve_list_cancel(server: Server) -> None:
    client = server.client()
    uploaded = client.files.upload(file=server.data, purpose="fine-tune", check=True)
    assert uploaded.id.startswith("file-") and uploaded.processing_status == "COMPLETED"
    assert uploaded.file_type == "jsonl" and uploaded.bytes == server.data.stat().st_size
    assert client.files.retrieve(uploaded.id).filename == "pairs.jsonl"
    assert [f.id for f in client.files.list().data] == [uploaded.id]

    limits = client.fine_tuning.model_limits(model_name="tiny-llama")
    assert limits.lora_training.max_rank >= 64 and limits.max_seq_length_dpo >= 1024

    job = client.fine_tuning.create(
        training_file=uploaded.id,
        model="tiny-llama",
        validation_file="",
        n_epochs=2,
        learning_rate=2e-4,
        lr_scheduler_type="linear",
        min_lr_ratio=0.1,
        warmup_ratio=0.1,
        max_seq_length=128,
        packing=True,
        batch_size="max",
        lora=True,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        training_method="dpo",
        dpo_beta=0.2,
        dpo_normalize_logratios_by_length=True,
        rpo_alpha=0.5,
        simpo_gamma=None,
        random_seed=7,
        suffix="tg",
        wandb_api_key="wandb-secret-not-shown",
        wandb_project_name="together-compat",
        early_stopping_enabled=False,
    )
    assert job.id.startswith("ft-") and job.status in ("pending", "queued")
    assert job.output_name is None and job.created_at is not None and job.updated_at is not None

    got = client.fine_tuning.retrieve(job.id)
    assert got.training_method is not None and got.training_method.method == "dpo"
    method = got.training_method.model_dump()
    assert method["dpo_beta"] == 0.2 and method["rpo_alpha"] == 0.5
    assert method["dpo_normalize_logratios_by_length"] is True
    kind = got.training_type.model_dump() if got.training_type else {}
    assert kind == {
        "type": "Lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "lora_trainable_modules": "all-linear",
    }
    assert got.n_epochs == 2 and got.learning_rate == 2e-4 and got.warmup_ratio == 0.1
    assert got.lr_scheduler is not None and got.lr_scheduler.lr_scheduler_type == "linear"
    raw = client.get(f"/v1/fine-tunes/{job.id}", cast_to=httpx.Response).json()
    assert raw["max_seq_length"] == 128 and raw["random_seed"] == 7 and raw["suffix"] == "tg"
    assert raw["wandb_project_name"] == "together-compat" and "wandb-secret-not-shown" not in json.dumps(raw)
    assert raw["total_price"] == 0 and raw["progress"] == {
        "estimate_available": False,
        "seconds_remaining": 0,
    }
    assert [e.type for e in client.fine_tuning.list_events(job.id).data] == ["job_pending", "job_pending"]
    assert all(e.object == "fine-tune-event" and "T" in e.created_at for e in got.events or [])

    assert [j.id for j in client.fine_tuning.list().data] == [job.id]
    assert client.fine_tuning.list_checkpoints(job.id).data == []
    assert client.fine_tuning.cancel(job.id).status == "cancelled"
    assert client.fine_tuning.retrieve(job.id).status == "cancelled"

    # The native client's view of the same job is unchanged: native ids, shapes and states.
    native = httpx.get(f"{server.base_url}/v1/fine-tunes", headers={"Authorization": f"Bearer {server.key}"})
    assert native.json()["data"][0]["id"] == "ftjob-" + job.id.removeprefix("ft-")
    assert native.json()["data"][0]["status"] == "cancelled"


def test_bad_inputs_raise_the_sdks_own_exceptions_and_create_nothing(server: Server, tmp_path: Path) -> None:
    client = server.client()
    good = client.files.upload(file=server.data, check=False)

    # A missing training file: a 404 from the server, the SDK's NotFoundError, with the server's words.
    with pytest.raises(together.NotFoundError, match="file-missing"):
        client.fine_tuning.create(
            training_file="file-missing", model="tiny-llama", training_method="dpo", lora=True
        )
    # An unknown model.
    with pytest.raises(together.NotFoundError, match="no-such-model"):
        client.fine_tuning.create(
            training_file=good.id, model="no-such-model", training_method="dpo", lora=True
        )
    # Another owner's file is no file at all.
    with pytest.raises(together.NotFoundError):
        server.client(server.other_key).fine_tuning.create(
            training_file=good.id, model="tiny-llama", training_method="dpo", lora=True
        )
    # A knob preftune does not have: a 400 naming it.
    with pytest.raises(together.BadRequestError, match="early_stopping_enabled"):
        client.fine_tuning.create(
            training_file=good.id,
            validation_file=good.id,
            model="tiny-llama",
            training_method="dpo",
            lora=True,
            n_evals=5,
            early_stopping_enabled=True,
        )
    # A knob out of preftune's range: a 400 naming it.
    with pytest.raises(together.BadRequestError, match="dpo_beta"):
        client.fine_tuning.create(
            training_file=good.id, model="tiny-llama", training_method="dpo", dpo_beta=50.0
        )

    # Malformed rows: the SDK's own check refuses them before any request ...
    not_json = tmp_path / "not-json.jsonl"
    not_json.write_text(json.dumps(_pair(0)) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(FileTypeError):
        client.files.upload(file=not_json, check=True)
    # ... and what its check lets through the server validates: FAILED, and a job on it is the SDK's 400.
    broken = _write(tmp_path / "broken.jsonl", [_pair(0), {"input": "not messages"}, _pair(2)])
    failed = client.files.upload(file=broken, check=True)
    assert failed.processing_status == "FAILED"
    report = client.files.retrieve(failed.id).validation_report
    assert report is not None and report.valid is False and report.error
    with pytest.raises(together.BadRequestError, match="failed validation"):
        client.fine_tuning.create(
            training_file=failed.id, model="tiny-llama", training_method="dpo", lora=True
        )

    assert client.fine_tuning.list().data == []
    # Unknown ids: the SDK's NotFoundError.
    with pytest.raises(together.NotFoundError):
        client.fine_tuning.retrieve("ft-0123456789abcdef01234567")
    with pytest.raises(together.NotFoundError):
        client.files.retrieve("file-missing")
    with pytest.raises(together.AuthenticationError):
        server.client("pt-not-a-key").fine_tuning.list()


def _handshake(server: Server, key: str | None = None) -> tuple[str, str]:
    response = httpx.post(
        f"{server.base_url}/v1/files",
        headers={"Authorization": f"Bearer {key or server.key}", "User-Agent": "Together/Python 3.1.1"},
        files={
            "purpose": (None, "fine-tune"),
            "file_name": (None, "pairs.jsonl"),
            "file_type": (None, "jsonl"),
        },
    )
    assert response.status_code == 302, response.text
    return response.headers["Location"], response.headers["X-Together-File-Id"]


def test_the_presigned_url_is_signed_expiring_single_use_size_limited_and_nothing_else(
    server: Server, tmp_path: Path
) -> None:
    body = server.data.read_bytes()
    url, file_id = _handshake(server)
    assert "/v1/files/uploads/" in url and server.key not in url

    # Tampered: one character of the payload or of the signature changed.
    prefix, token = url.rsplit("/", 1)
    payload, signature = token.split(".")
    for forged in (
        f"{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}",
        f"{payload}.{signature[::-1]}",
    ):
        refused = httpx.put(f"{prefix}/{forged}", content=body)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_upload_url"
    # The API key is not a grant, nor the grant an API key.
    assert httpx.put(f"{prefix}/{server.key}", content=body).status_code == 401
    as_key = httpx.get(f"{server.base_url}/v1/files", headers={"Authorization": f"Bearer {token}"})
    assert as_key.status_code == 401
    # Nothing happened to the reserved file id.
    files = server.client().files
    with pytest.raises(together.NotFoundError):
        files.retrieve(file_id)

    # Over the URL's size limit (the server's upload limit here: 64 KiB). Declared up front: a 413
    # before a byte is read, and the URL stays usable for the right file ...
    big_url, big_id = _handshake(server)
    assert httpx.put(big_url, content=b"x" * (65 * 1024)).status_code == 413
    assert httpx.put(big_url, content=body).json()["id"] == big_id
    # ... streamed without a length: cut off at the limit with a 413, and that URL is spent.
    chunked_url, chunked_id = _handshake(server)
    streamed = httpx.put(chunked_url, content=iter([b"x" * 1024] * 80))
    assert streamed.status_code == 413
    assert httpx.put(chunked_url, content=body).status_code == 409
    with pytest.raises(together.NotFoundError):
        files.retrieve(chunked_id)

    # The real upload, once; the same URL again is refused and the file keeps its first bytes.
    done = httpx.put(url, content=body)
    assert done.status_code == 200 and done.json()["id"] == file_id
    again = httpx.put(url, content=b'{"input": "other"}\n')
    assert again.status_code == 409 and again.json()["error"]["code"] == "upload_url_used"
    assert files.retrieve(file_id).bytes == len(body)
    # Another owner cannot finish or read it.
    with pytest.raises(together.NotFoundError):
        server.client(server.other_key).files.retrieve(file_id)

    # Expired: a grant issued 1 s in the past.
    with server.db.session() as session:
        _, expired = upload_service.issue_grant(
            session, server.settings, server.owner_id, filename="a.jsonl", ttl_seconds=-1
        )
    gone = httpx.put(f"{prefix}/{expired}", content=body)
    assert gone.status_code == 401 and "expired" in gone.json()["error"]["message"]


def test_a_retried_create_returns_the_first_job_and_a_new_request_creates(server: Server) -> None:
    """The SDK retries a create (timeout, 5xx) without an idempotency key, marking it with
    x-stainless-retry-count: the retry is the first job, not a second one."""
    file_id = server.client().files.upload(file=server.data, check=False).id
    body = {
        "training_file": file_id,
        "model": "tiny-llama",
        "training_method": {"method": "dpo", "dpo_beta": 0.3},
    }
    headers = {"Authorization": f"Bearer {server.key}", "User-Agent": "Together/Python 3.1.1"}
    first = httpx.post(f"{server.base_url}/v1/fine-tunes", json=body, headers=headers).json()["id"]
    retried = httpx.post(
        f"{server.base_url}/v1/fine-tunes", json=body, headers={**headers, "x-stainless-retry-count": "1"}
    ).json()["id"]
    again = httpx.post(f"{server.base_url}/v1/fine-tunes", json=body, headers=headers).json()["id"]
    assert first.startswith("ft-") and retried == first and again != first
