"""The official `openai` client against the real app in-process: files, jobs, list pagination,
events, checkpoints, errors, and job creation under the client's own retries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

GOOD = {
    "input": {"messages": [{"role": "user", "content": "Say hi."}]},
    "preferred_output": [{"role": "assistant", "content": "Hi!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}


class LoseFirstJobResponse(httpx.BaseTransport):
    """Delivers every request to the app, but drops the answer to the first job create, as a
    network failure after the server has acted would."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.dropped = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        content = response.read()
        if request.method == "POST" and request.url.path == "/v1/fine_tuning/jobs" and not self.dropped:
            self.dropped += 1
            raise httpx.ReadTimeout("response lost", request=request)
        return httpx.Response(response.status_code, headers=response.headers, content=content)


def _openai(api: Any, key: str | None = None, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=key or api.key_a, http_client=api.client, **kwargs
    )


@pytest.fixture
def uploaded(api: Any, tmp_path: Path) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(GOOD) for _ in range(5)) + "\n")
    with path.open("rb") as handle:
        file = _openai(api).files.create(file=handle, purpose="fine-tune")
    assert file.status == "processed" and file.purpose == "fine-tune"
    return file.id


def _dpo(beta: float = 0.1, **extra: Any) -> Any:
    return {
        "type": "dpo",
        "dpo": {"hyperparameters": {"beta": beta, "n_epochs": 1, "batch_size": 2, **extra}},
    }


def test_jobs_create_retrieve_list_cancel(api: Any, uploaded: str, tiny_model_dir: Path) -> None:
    client = _openai(api)
    job = client.fine_tuning.jobs.create(
        model=str(tiny_model_dir),
        training_file=uploaded,
        method=_dpo(0.25, rpo_alpha=1.0, learning_rate_multiplier=2.0),
        suffix="oai",
    )
    assert job.status == "queued" and job.object == "fine_tuning.job"
    assert job.method is not None and job.method.type == "dpo"
    hyper = job.method.dpo.hyperparameters if job.method.dpo else None
    assert hyper is not None and hyper.beta == 0.25 and hyper.learning_rate_multiplier == pytest.approx(2.0)
    assert (hyper.model_extra or {}).get("rpo_alpha") == 1.0
    native = api.client.get(f"/v1/fine-tunes/{job.id}", headers=api.headers()).json()
    assert native["hyperparameters"]["learning_rate"] == pytest.approx(2 * 5e-5)

    second = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=uploaded, method=_dpo())
    page = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [second.id] and page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1, after=second.id).data] == [job.id]
    assert [j.id for j in client.fine_tuning.jobs.list()] == [second.id, job.id]

    assert client.fine_tuning.jobs.retrieve(job.id).seed == 42
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"

    events = client.fine_tuning.jobs.list_events(job.id).data
    assert [e.data["type"] for e in events if isinstance(e.data, dict)] == [
        "JOB_CANCELLED",
        "JOB_QUEUED",
        "JOB_PENDING",
    ]
    assert all(e.type == "message" for e in events)
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []


def test_supervised_method_needs_sft_data(api: Any, uploaded: str, tiny_model_dir: Path) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _openai(api).fine_tuning.jobs.create(
            model=str(tiny_model_dir), training_file=uploaded, method={"type": "supervised"}
        )
    assert info.value.body is not None
    assert info.value.body["param"] == "training_file"  # type: ignore[index]


def test_errors_arrive_in_the_openai_envelope(api: Any, uploaded: str, tiny_model_dir: Path) -> None:
    client = _openai(api, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(
            model=str(tiny_model_dir), training_file=uploaded, method=_dpo(beta=-1)
        )
    assert "dpo_beta" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.AuthenticationError):
        _openai(api, key="pt-wrong", max_retries=0).fine_tuning.jobs.list()


def test_a_retried_create_makes_one_job(api: Any, uploaded: str, tiny_model_dir: Path) -> None:
    lossy = LoseFirstJobResponse(api.client._transport)
    http = httpx.Client(transport=lossy, base_url="http://testserver")
    client = openai.OpenAI(
        base_url="http://testserver/v1", api_key=api.key_a, http_client=http, max_retries=2
    )
    job = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=uploaded, method=_dpo())
    assert lossy.dropped == 1
    jobs = client.fine_tuning.jobs.list().data
    assert [j.id for j in jobs] == [job.id]
    # A deliberate second create (a new call, not a retry) still makes a second job.
    again = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=uploaded, method=_dpo())
    assert again.id != job.id


def test_files_through_the_openai_client(api: Any, uploaded: str, tmp_path: Path) -> None:
    client = _openai(api)
    assert [f.id for f in client.files.list()] == [uploaded]
    retrieved = client.files.retrieve(uploaded)
    assert retrieved.status == "processed" and retrieved.filename == "pairs.jsonl"
    assert client.files.content(uploaded).read() == (tmp_path / "pairs.jsonl").read_bytes()
    deleted = client.files.delete(uploaded)
    assert deleted.deleted and deleted.id == uploaded
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded)
