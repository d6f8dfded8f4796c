"""`preftune fine-tuning create` has one flag per TrainingSpec knob, with its help and default."""

from __future__ import annotations

from typing import Any

import typer.main
from typer.testing import CliRunner

from preftune.cli.fine_tuning import app
from preftune.contracts.spec import TrainingSpec


def _create_command() -> Any:
    group: Any = typer.main.get_command(app)
    return group.commands["create"]


def test_every_knob_is_a_flag_with_its_default_in_the_help() -> None:
    options = {opt: param for param in _create_command().params for opt in param.opts}
    for name, field in TrainingSpec.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in options, f"{flag} missing"
        param = options[flag]
        # None means "not given": the server applies TrainingSpec's default.
        assert param.default is None
        help_text = getattr(param, "help", "") or ""
        assert str(field.description)[:30] in help_text
        if not name.endswith("api_key"):
            assert f"(default: {field.default})" in help_text
    assert "--no-lora" in {o for p in _create_command().params for o in p.secondary_opts}


def test_choices_come_from_the_spec_literals() -> None:
    result = CliRunner().invoke(app, ["create", "-t", "file-1", "-m", "m", "--training-method", "ppo"])
    assert result.exit_code == 2
    assert "dpo" in result.output and "sft" in result.output
