"""The inference routes over real HTTP: errors in the OpenAI envelope, disconnects, deployments."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest


def _chat(live: Any, **body: Any) -> httpx.Response:
    payload = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        **body,
    }
    return httpx.post(
        f"{live.base_url}/v1/chat/completions", json=payload, headers=live.headers(), timeout=60
    )


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "no-such-model"}, 404, "model"),
        ({"model": "/etc"}, 404, "model"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, 400, "messages[0].content"),
        ({"max_tokens": 100_000}, 400, "max_tokens"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"temperature": 3}, 400, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"tools": [{"type": "function"}]}, 400, "tools"),
        ({"bogus": 1}, 400, "bogus"),
    ],
)
def test_bad_requests_answer_4xx_in_the_openai_envelope(
    live_server: Any, body: dict[str, Any], status: int, param: str
) -> None:
    response = _chat(live_server, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]
    # ...and the server still answers the next request.
    assert _chat(live_server).status_code == 200


def test_unknown_fine_tuned_model_and_other_owners_models_are_404(
    live_server: Any, adapter_dirs: list[Path]
) -> None:
    response = _chat(live_server, model="ft:tiny-llama:x:ftjob-nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def _stats(live: Any) -> dict[str, Any]:
    """The engine's counters for the base model `tiny-llama` (other tests may load other models)."""
    stats: dict[str, Any] = live.engine.stats()
    return next(v for k, v in stats.items() if Path(k).name == "tiny-llama")


def _wait_for_cancel(live: Any, before: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    stats = _stats(live)
    while time.monotonic() < deadline and stats["finished"].get("cancelled", 0) == before:
        time.sleep(0.05)
        stats = _stats(live)
    return stats


def test_stream_disconnect_stops_generation(live_server: Any) -> None:
    _chat(live_server)  # load the model
    before = _stats(live_server)
    payload = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 1500,
        "stream": True,
        "temperature": 0,
    }
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST", f"{live_server.base_url}/v1/chat/completions", json=payload, headers=live_server.headers()
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith("data: {"):
                seen += 1
            if seen >= 3:
                break
    # The connection is closed: the engine must drop the sequence long before its 1500 tokens.
    stats = _wait_for_cancel(live_server, before["finished"].get("cancelled", 0))
    assert stats["finished"].get("cancelled", 0) == before["finished"].get("cancelled", 0) + 1
    assert stats["running"] == 0
    assert stats["tokens_generated"] - before["tokens_generated"] < 1500


def test_non_streaming_disconnect_stops_generation(live_server: Any) -> None:
    payload = {"model": "tiny-llama", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500}
    _chat(live_server)  # load the model first
    before = _stats(live_server)
    url = httpx.URL(live_server.base_url)
    body = json.dumps(payload).encode()
    head = "".join(
        f"{name}: {value}\r\n"
        for name, value in {
            **live_server.headers(),
            "Host": f"{url.host}:{url.port}",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
        }.items()
    )
    # A raw socket, hung up once the engine is generating this answer: a client timeout instead
    # would race the tiny model, which can write its 1,500 tokens within a second on a fast machine.
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n".encode() + body)
        deadline = time.monotonic() + 30
        while _stats(live_server)["tokens_generated"] == before["tokens_generated"]:
            assert time.monotonic() < deadline, "the request never started generating"
            time.sleep(0.005)
    stats = _wait_for_cancel(live_server, before["finished"].get("cancelled", 0))
    assert stats["finished"].get("cancelled", 0) == before["finished"].get("cancelled", 0) + 1
    assert stats["running"] == 0
    assert stats["tokens_generated"] - before["tokens_generated"] < 1500


def test_streamed_events_end_with_done_and_carry_usage(live_server: Any) -> None:
    payload = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 2,
        "seed": 3,
    }
    response = httpx.post(
        f"{live_server.base_url}/v1/chat/completions", json=payload, headers=live_server.headers(), timeout=60
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    finishes = {
        c["choices"][0]["index"]: c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"] and c["choices"][0]["finish_reason"]
    }
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert chunks[-1]["choices"] == []


def test_deployments_load_list_and_delete(live_server: Any, adapter_dirs: list[Path]) -> None:
    name = live_server.register_fine_tune(adapter_dirs[0])
    url, headers = f"{live_server.base_url}/v1/deployments", live_server.headers()
    created = httpx.post(url, json={"model": name}, headers=headers, timeout=30).json()
    assert created["status"] in ("loading", "ready") and created["model"] == name
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = httpx.get(f"{url}/{created['id']}", headers=headers, timeout=30).json()
        if got["status"] != "loading":
            break
        time.sleep(0.1)
    assert got["status"] == "ready", got
    models = httpx.get(f"{live_server.base_url}/v1/models", headers=headers, timeout=30).json()["data"]
    by_id = {m["id"]: m for m in models}
    assert by_id[name]["loaded"] is True and by_id[name]["kind"] == "fine-tuned"
    assert by_id["tiny-llama"]["loaded"] is True
    listed = httpx.get(url, headers=headers, timeout=30).json()["data"]
    assert created["id"] in [d["id"] for d in listed]
    deleted = httpx.delete(f"{url}/{created['id']}", headers=headers, timeout=30).json()
    assert deleted["status"] == "stopped"
    assert httpx.get(f"{url}/{created['id']}", headers=headers, timeout=30).status_code == 404
    bad = httpx.post(url, json={"model": "nope"}, headers=headers, timeout=30)
    assert bad.status_code == 404 and bad.json()["error"]["param"] == "model"
    too_many = httpx.post(url, json={"model": name, "min_replicas": 2}, headers=headers, timeout=30)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "min_replicas"


def test_a_model_that_fails_to_load_is_reported_and_the_server_goes_on(
    live_server: Any, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    name = live_server.register_fine_tune(None, merged=broken, suffix="broken")
    response = _chat(live_server, model=name)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "model_load_failed"
    assert name in response.json()["error"]["message"]
    assert _chat(live_server).status_code == 200
