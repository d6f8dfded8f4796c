"""The service commands of the CLI against the real app in-process (the CLI's client is a
real `preftune.Client` whose HTTP goes to the app through Starlette's TestClient)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from preftune.api.app import create_app
from preftune.cli.main import app as cli_app
from preftune.client import Client
from preftune.config import Settings

GOOD = {
    "input": {"messages": [{"role": "user", "content": "Say hi."}]},
    "preferred_output": [{"role": "assistant", "content": "Hi!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}


@pytest.fixture
def wired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from preftune.service import keys as key_service

    app = create_app(Settings(home=tmp_path / "home"))
    with TestClient(app) as http:
        with app.state.db.session() as session:
            owner = key_service.create_owner(session, "cli")
            _, key = key_service.create_key(session, owner.id, "cli")

        def make_client() -> Client:
            # TestClient is an httpx client, but of the copy Starlette ships (httpx2), so mypy refuses it.
            return Client(api_key=key, base_url="http://testserver", http_client=http, max_retries=0)  # type: ignore[arg-type]

        for module in ("preftune.cli.files", "preftune.cli.fine_tuning", "preftune.cli.keys"):
            monkeypatch.setattr(f"{module}.make_client", make_client)
        yield


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli_app, list(args))
    assert result.exit_code == code, f"preftune {' '.join(args)} -> {result.exit_code}\n{result.output}"
    return result.output


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_create_from_a_config_file_with_flags_overriding_it(
    wired: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = write(tmp_path / "pairs.jsonl", [GOOD] * 4)
    file_id = json.loads(run("files", "upload", str(data), "--json"))["id"]
    config = tmp_path / "spec.yaml"
    config.write_text("dpo_beta: 0.3\nlora_r: 4\nrpo_alpha: 1.0\n")
    job = json.loads(
        run(
            "fine-tuning",
            "create",
            "-t",
            file_id,
            "-m",
            str(tiny_model_dir),
            "--config",
            str(config),
            "--lora-r",
            "8",
            "--no-lora",
            "--json",
        )
    )
    hyper = job["hyperparameters"]
    assert hyper["dpo_beta"] == 0.3 and hyper["rpo_alpha"] == 1.0  # from the file
    assert hyper["lora_r"] == 8 and hyper["lora"] is False  # flags win
    queued = json.loads(run("fine-tuning", "list", "--status", "queued", "--json"))["data"]
    assert [j["id"] for j in queued] == [job["id"]]
    assert json.loads(run("fine-tuning", "list", "--status", "completed", "--json"))["data"] == []
    run("fine-tuning", "list", "--status", "finished", code=2)


def test_bool_or_auto_knobs_take_true_false_or_auto(
    wired: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = write(tmp_path / "pairs.jsonl", [GOOD] * 4)
    file_id = json.loads(run("files", "upload", str(data), "--json"))["id"]
    job = json.loads(
        run(
            "fine-tuning",
            "create",
            "-t",
            file_id,
            "-m",
            str(tiny_model_dir),
            "--gradient-checkpointing",
            "false",
            "--json",
        )
    )
    assert job["hyperparameters"]["gradient_checkpointing"] is False


def test_a_file_that_fails_validation_exits_2_and_shows_the_report(wired: None, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.jsonl", [GOOD, {"input": {"messages": []}}, GOOD])
    output = run("files", "upload", str(bad), code=2)
    assert "status: error" in output and "--report" in output
    file_id = json.loads(run("files", "list", "--json"))["data"][0]["id"]
    report = run("files", "retrieve", file_id, "--report")
    assert "line" in report and "input" in report
    run("files", "delete", file_id)
    assert "not found" in run("files", "retrieve", file_id, code=4)


def test_tables_show_whole_ids(wired: None, tmp_path: Path) -> None:
    data = write(tmp_path / "pairs.jsonl", [GOOD] * 3)
    file_id = json.loads(run("files", "upload", str(data), "--json"))["id"]
    assert file_id in run("files", "list")


def test_upload_with_a_progress_bar(wired: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("preftune.cli.files.PROGRESS_FROM_BYTES", 0)
    data = write(tmp_path / "pairs.jsonl", [GOOD] * 50)
    output = run("files", "upload", str(data), "--name", "pairs")
    assert "status: processed" in output and "name: pairs" in output


def test_upload_with_an_idempotency_key_returns_the_same_file(wired: None, tmp_path: Path) -> None:
    data = write(tmp_path / "pairs.jsonl", [GOOD] * 3)
    first = json.loads(run("files", "upload", str(data), "--json", "--idempotency-key", "k1"))
    again = json.loads(run("files", "upload", str(data), "--json", "--idempotency-key", "k1"))
    assert again["id"] == first["id"]
    listed = json.loads(run("files", "list", "--json"))
    assert [f["id"] for f in listed["data"]] == [first["id"]]
    other = write(tmp_path / "pairs.jsonl", [GOOD] * 4)
    output = run("files", "upload", str(other), "--idempotency-key", "k1", code=2)
    assert "Idempotency-Key" in output and first["id"] in output


def test_content_to_a_file_and_to_stdout(wired: None, tmp_path: Path) -> None:
    data = write(tmp_path / "pairs.jsonl", [GOOD] * 3)
    uploaded = json.loads(run("files", "upload", str(data), "--json", "--name", "three"))
    copy = tmp_path / "copy.jsonl"
    written = json.loads(run("files", "content", "three", "-o", str(copy), "--json"))
    assert copy.read_bytes() == data.read_bytes() and written["sha256"] == uploaded["sha256"]
    assert run("files", "content", uploaded["id"]) == data.read_text()
