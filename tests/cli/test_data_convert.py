"""`preftune data convert`: every format into one that `files check` accepts; problems reported."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from typer.testing import CliRunner

from preftune.cli.main import app

runner = CliRunner()


def hh_file(tmp_path: Path) -> Path:
    records = [
        {
            "chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}",
            "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad",
        }
        for i in range(4)
    ]
    records.append(
        {
            "chosen": "\n\nHuman: a\n\nAssistant: x\n\nHuman: b\n\nAssistant: y",
            "rejected": "\n\nHuman: DIFFERENT\n\nAssistant: x\n\nHuman: b\n\nAssistant: z",
        }
    )
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def test_hh_rlhf_then_files_check(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["data", "convert", "--from", "hh-rlhf", str(hh_file(tmp_path)), str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 4 examples" in result.output and "line 5, rejected[0]" in result.output
    assert "passes files check" in result.output
    assert runner.invoke(app, ["files", "check", str(out)]).exit_code == 0


def test_to_sft_json_report(tmp_path: Path) -> None:
    prefs = tmp_path / "prefs.jsonl"
    assert (
        runner.invoke(
            app, ["data", "convert", "--from", "hh-rlhf", str(hh_file(tmp_path)), str(prefs)]
        ).exit_code
        == 0
    )
    sft = tmp_path / "sft.jsonl"
    result = runner.invoke(app, ["data", "convert", "--to", "sft", str(prefs), str(sft), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["n_written"] == 4 and payload["output_check"]["format"] == "sft_messages"
    first = json.loads(sft.read_text().splitlines()[0])
    assert first == {
        "messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "good 0"}]
    }


def test_too_little_survives_exits_1(tmp_path: Path) -> None:
    src = tmp_path / "se.json"
    src.write_text(json.dumps([{"question": "q", "response_j": "a", "response_k": "b"}]))
    result = runner.invoke(
        app, ["data", "convert", "--from", "stack-exchange", str(src), str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 1 and "does not pass files check" in result.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    src = hh_file(tmp_path)
    out = str(tmp_path / "o.jsonl")
    assert runner.invoke(app, ["data", "convert", str(src), out]).exit_code == 2  # --from needed
    assert runner.invoke(app, ["data", "convert", "--from", "csv", str(src), out]).exit_code == 2
    assert (
        runner.invoke(app, ["data", "convert", "--from", "trl", "--to", "kto", str(src), out]).exit_code == 2
    )
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    result = runner.invoke(app, ["data", "convert", "--from", "sharegpt", str(broken), out])
    assert result.exit_code == 2 and "not valid JSON" in result.output
