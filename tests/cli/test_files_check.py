"""`preftune files check`: the verdict as exit code, the report for people and for scripts, token statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from preftune.cli.main import app

runner = CliRunner()


def row(i: int, *, bad_role: bool = False) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Question {i}?"}]},
        "preferred_output": [{"role": "assistant", "content": f"Answer {i}."}],
        "non_preferred_output": [{"role": "user" if bad_role else "assistant", "content": "Dunno."}],
    }


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    return write(tmp_path / "good.jsonl", [row(i) for i in range(4)])


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    return write(tmp_path / "bad.jsonl", [row(1), row(2), row(3, bad_role=True), row(4)])


def test_good_file_exits_0(good_file: Path) -> None:
    result = runner.invoke(app, ["files", "check", str(good_file)])
    assert result.exit_code == 0, result.output
    assert "4 examples" in result.output and "can be trained on" in result.output


def test_bad_file_exits_1_naming_line_and_field(bad_file: Path) -> None:
    result = runner.invoke(app, ["files", "check", str(bad_file)])
    assert result.exit_code == 1
    assert 'line 3, non_preferred_output[0].role: role must be "assistant", got "user"' in result.output


def test_json_report(bad_file: Path) -> None:
    result = runner.invoke(app, ["files", "check", str(bad_file), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["format"] == "preference" and report["n_examples"] == 4
    assert report["errors"] == [
        {
            "line": 3,
            "field": "non_preferred_output[0].role",
            "message": 'role must be "assistant", got "user"',
            "code": "invalid_role",
        }
    ]


def test_error_list_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("not json\n" * 30)
    result = runner.invoke(app, ["files", "check", str(path), "--max-errors", "5"])
    assert result.exit_code == 1
    assert "first 5 of 30" in result.output and "and 25 more errors" in result.output


@pytest.mark.parametrize(
    "args", [["missing.jsonl"], ["{good}", "--max-length", "64"], ["{good}", "--max-errors", "-1"]]
)
def test_usage_errors_exit_2(args: list[str], good_file: Path) -> None:
    result = runner.invoke(app, ["files", "check", *[a.format(good=good_file) for a in args]])
    assert result.exit_code == 2


def test_token_statistics_with_model(good_file: Path, tiny_model_dir: Path, preftune_home: Path) -> None:
    result = runner.invoke(
        app,
        ["files", "check", str(good_file), "--json", "--model", str(tiny_model_dir), "--max-length", "16"],
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)["token_stats"]
    assert stats["max_length"] == 16 and stats["n_examples"] == 4
    for part in ("prompt", "preferred", "non_preferred"):
        assert 0 < stats[part]["min"] <= stats[part]["median"] <= stats[part]["p95"] <= stats[part]["max"]
    # SmolLM2's template adds a default system prompt, so every prompt is longer than 16 tokens.
    assert stats["truncated"] == 4
    human = runner.invoke(app, ["files", "check", str(good_file), "--model", str(tiny_model_dir)])
    assert human.exit_code == 0 and "truncated at --max-length 1024: 0 of 4 examples" in human.output


def test_unknown_model_is_a_usage_error(good_file: Path, preftune_home: Path) -> None:
    result = runner.invoke(app, ["files", "check", str(good_file), "--model", "no-such-model"])
    assert result.exit_code == 2


def test_default_max_length_matches_training_spec() -> None:
    from preftune.cli.files_check import DEFAULT_MAX_LENGTH
    from preftune.contracts.spec import TrainingSpec

    assert TrainingSpec.model_fields["max_length"].default == DEFAULT_MAX_LENGTH


def test_token_statistics_for_sft_data(tmp_path: Path, tiny_model_dir: Path, preftune_home: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello!"}]}
        for i in range(3)
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["files", "check", str(path), "--json", "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "sft_messages"
    stats = report["token_stats"]
    assert "prompt" not in stats and stats["sequence"]["min"] > 0 and stats["truncated"] == 0
