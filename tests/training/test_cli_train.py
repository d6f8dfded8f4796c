"""`preftune train`: flags generated from TrainingSpec, --config with flags winning, readable errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from preftune.cli.main import app
from preftune.cli.train import collect_spec
from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError, TrainingSpecError


def test_every_knob_is_a_flag_with_its_help() -> None:
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in TrainingSpec.model_fields:
        assert "--" + name.replace("_", "-") in result.output, name
    assert "--no-lora" in result.output and "--resume" in result.output and "--config" in result.output


def test_config_file_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "spec.yaml"
    config.write_text("dpo_beta: 0.3\nbatch_size: 2\nlora: false\n")
    spec = collect_spec(config, {"dpo_beta": 0.5, "learning_rate": None, "gradient_checkpointing": "false"})
    assert spec.dpo_beta == 0.5 and spec.batch_size == 2 and spec.lora is False
    assert spec.gradient_checkpointing is False and spec.learning_rate == TrainingSpec().learning_rate
    config.write_text("dpo_betta: 0.3\n")
    with pytest.raises(TrainingSpecError, match="dpo_betta"):
        collect_spec(config, {})


def test_bad_input_exits_with_a_message(tmp_path: Path, pairs_file: Path, preftune_home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "-t", str(pairs_file), "-o", str(tmp_path / "o"), "--dpo-beta", "0"]
    )
    assert result.exit_code == 2 and "dpo_beta" in result.output
    result = runner.invoke(
        app, ["train", "-t", str(pairs_file), "-o", str(tmp_path / "o"), "-m", "nope/none"]
    )
    assert result.exit_code == 4 and "not found" in result.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--launcher", "slurm"], "--launcher must be one of torchrun, ray"),
        (["--strategy", "zero3"], "--strategy must be one of auto, ddp, fsdp"),
        (["--launcher", "ray", "--rdzv-endpoint", "node0:29500"], "Ray places the ranks itself"),
    ],
)
def test_bad_launch_flags_are_named(
    tmp_path: Path, pairs_file: Path, preftune_home: Path, flags: list[str], message: str
) -> None:
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["train", "-t", str(pairs_file), "-o", str(out), *flags])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_without_ray_the_ray_launcher_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from preftune.training.ray_launch import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the extra
    with pytest.raises(InvalidRequestError, match=r'pip install "preftune\[ray\]"') as info:
        require_ray()
    assert info.value.code == "ray_not_installed" and info.value.param == "launcher"
