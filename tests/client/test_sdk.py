"""The SDK against the real app in-process: typed results, typed errors with the server's
message and param, cursor pagination, retries that never duplicate a job, credentials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from preftune import errors
from preftune.client import APIConnectionError, Client, read_local_key
from preftune.client.types import FileObject, FineTuneJob
from preftune.config import Settings

GOOD = {
    "input": {"messages": [{"role": "user", "content": "Say hi."}]},
    "preferred_output": [{"role": "assistant", "content": "Hi!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}


def _data(tmp_path: Path, rows: int = 4, name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(GOOD) for _ in range(rows)) + "\n")
    return path


def test_files_round_trip_with_typed_results(sdk: Any, tmp_path: Path) -> None:
    client = sdk.client()
    uploaded = client.files.upload(_data(tmp_path), name="pairs")
    assert isinstance(uploaded, FileObject) and uploaded.status == "processed" and uploaded.n_examples == 4
    assert client.files.retrieve("pairs").id == uploaded.id
    assert client.files.content(uploaded.id) == _data(tmp_path).read_bytes()
    assert client.files.report(uploaded.id)["n_examples"] == 4
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(errors.NotFoundError) as info:
        client.files.retrieve(uploaded.id)
    assert info.value.status_code == 404 and "not found" in info.value.message


def test_pagination_walks_every_page(sdk: Any, tmp_path: Path) -> None:
    client = sdk.client()
    ids = [client.files.upload(_data(tmp_path, rows=3 + i)).id for i in range(5)]
    page = client.files.list(limit=2)
    assert len(page) == 2 and page.has_more
    assert [f.id for f in page] == ids[::-1]  # iterating fetches the later pages


def test_errors_carry_the_server_message_and_param(sdk: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    client = sdk.client()
    file_id = client.files.upload(_data(tmp_path)).id
    with pytest.raises(errors.InvalidRequestError) as info:
        client.fine_tuning.create(training_file=file_id, model=str(tiny_model_dir), dpo_beta=0)
    assert info.value.param == "dpo_beta" and "dpo_beta" in info.value.message
    with pytest.raises(errors.NotFoundError) as missing:
        client.fine_tuning.create(training_file=file_id, model="nope")
    assert missing.value.param == "model"
    with pytest.raises(errors.AuthenticationError):
        Client(api_key="pt-bad", base_url="http://testserver", http_client=sdk.app_client).files.list()


def test_a_create_retried_after_a_5xx_makes_one_job(sdk: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    calls = {"n": 0}

    def fail_first_create(request: httpx.Request) -> int | None:
        if request.method == "POST" and request.url.path == "/v1/fine-tunes":
            calls["n"] += 1
            return 503 if calls["n"] == 1 else None
        return None

    client = sdk.client(fail_first_create)
    file_id = client.files.upload(_data(tmp_path)).id
    job = client.fine_tuning.create(training_file=file_id, model=str(tiny_model_dir), lora_r=4)
    assert isinstance(job, FineTuneJob) and job.hyperparameters["lora_r"] == 4
    creates = [r for r in client.transport_log if r.url.path == "/v1/fine-tunes" and r.method == "POST"]
    assert len(creates) == 2
    assert creates[0].headers["Idempotency-Key"] == creates[1].headers["Idempotency-Key"]
    assert [j.id for j in client.fine_tuning.list()] == [job.id]


def test_retries_stop_and_the_last_error_is_raised(sdk: Any) -> None:
    client = sdk.client(lambda _r: 502, max_retries=2)
    with pytest.raises(errors.PreftuneError) as info:
        client.files.list()
    assert info.value.status_code == 502 and len(client.transport_log) == 3


def test_unreachable_server_says_what_to_do() -> None:
    client = Client(api_key="k", base_url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(APIConnectionError) as info:
        client.files.list()
    assert "PREFTUNE_BASE_URL" in info.value.message


def test_key_comes_from_the_environment_or_the_credentials_file(
    preftune_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Client().api_key is None
    (preftune_home / "credentials").write_text("pt-local-key\n")
    assert read_local_key(Settings()) == "pt-local-key"
    assert Client().api_key == "pt-local-key"
    monkeypatch.setenv("PREFTUNE_API_KEY", "pt-env-key")
    monkeypatch.setenv("PREFTUNE_BASE_URL", "http://example.test:1234/")
    client = Client()
    assert client.api_key == "pt-env-key" and client.base_url == "http://example.test:1234"


def test_upload_reports_progress_and_survives_a_retry(sdk: Any, tmp_path: Path) -> None:
    calls = {"n": 0}

    def fail_first_upload(request: httpx.Request) -> int | None:
        if request.method == "POST" and request.url.path == "/v1/files":
            calls["n"] += 1
            return 503 if calls["n"] == 1 else None
        return None

    client = sdk.client(fail_first_upload)
    path = _data(tmp_path, rows=2000)
    seen: list[tuple[int, int]] = []
    uploaded = client.files.upload(path, on_progress=lambda done, total: seen.append((done, total)))
    size = path.stat().st_size
    assert seen[-1] == (size, size) and all(total == size for _, total in seen)
    assert uploaded.bytes == size and client.files.content(uploaded.id) == path.read_bytes()
    # The retried request sent the whole file again, from its start, under the same Idempotency-Key:
    # the server had recorded the first attempt, so the retry got that file rather than a second one.
    assert calls["n"] == 2
    uploads = [r for r in client.transport_log if r.url.path == "/v1/files" and r.method == "POST"]
    assert uploads[0].headers["Idempotency-Key"] == uploads[1].headers["Idempotency-Key"]
    assert [f.id for f in client.files.list()] == [uploaded.id]


def test_an_upload_key_is_kept_across_processes_and_refuses_other_content(sdk: Any, tmp_path: Path) -> None:
    client = sdk.client()
    first = client.files.upload(_data(tmp_path), idempotency_key="nightly-2026-11-23")
    # A second process (a re-run script) repeating the upload with its key gets the same file.
    again = sdk.client().files.upload(_data(tmp_path), idempotency_key="nightly-2026-11-23")
    assert again.id == first.id
    with pytest.raises(errors.ConflictError) as info:
        client.files.upload(_data(tmp_path, rows=5), idempotency_key="nightly-2026-11-23")
    assert info.value.status_code == 409 and info.value.param == "Idempotency-Key"
    assert first.id in info.value.message


def test_an_evaluation_round_trip_with_typed_results(sdk: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    from preftune.client.types import Evaluation
    from preftune.runner.worker import Runner

    client = sdk.client()
    uploaded = client.files.upload(_data(tmp_path, rows=3))
    queued = client.evaluations.create(model=str(tiny_model_dir), file=uploaded.id, max_length=64)
    assert isinstance(queued, Evaluation) and queued.status == "queued" and not queued.done
    assert Runner(sdk.settings).run_evaluation_once() == "completed"
    done = client.evaluations.wait(queued.id, timeout=10)
    assert done.done and done.result is not None and done.result["n_pairs"] == 3
    assert [e.id for e in client.evaluations.list()] == [queued.id]
    with pytest.raises(errors.NotFoundError):
        client.evaluations.retrieve("eval-nope")
