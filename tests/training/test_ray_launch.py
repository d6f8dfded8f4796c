"""The `ray` launcher: `preftune train --launcher ray` runs the same `train()` as torchrun's
processes under Ray Train's TorchTrainer, on a local Ray cluster of 2 CPU workers, and trains what
one process trains (fp32, to 1e-5); rank 0's events and metrics reach the driver's progress display.
(Bad launcher flags and a missing Ray: tests/training/test_cli_train.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers.distributed import assert_same_training, metric_lines, spawn_train
from helpers.server import child_env, preftune_command

pytestmark = pytest.mark.slow  # a local Ray cluster: about 1-3 minutes on a loaded 2-core machine
ray = pytest.importorskip("ray", reason="the ray extra (ray[train]) is not installed")

KNOBS: dict[str, Any] = {
    "max_length": 48,
    "batch_size": 1,
    "gradient_accumulation_steps": 4,
    "max_steps": 3,
    "learning_rate": 5e-3,
    "precision": "fp32",
    "lora_dropout": 0.0,
}


def ray_env(home: Path) -> dict[str, str]:
    """A child's environment for a fresh local Ray (never a cluster the caller is on)."""
    env = child_env(home, RAY_DISABLE_USAGE_STATS="1")
    env.pop("RAY_ADDRESS", None)
    return env


def test_preftune_train_on_ray_trains_what_one_process_trains(
    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    kwargs = {"model": str(tiny_model_dir), "training_file": pairs_file, "models_dir": tmp_path / "models"}
    one = tmp_path / "one"
    spawn_train(1, KNOBS, output_dir=one, **kwargs)

    on_ray = tmp_path / "on-ray"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in KNOBS.items()]
    args = ["-t", str(pairs_file), "-m", str(tiny_model_dir), "-o", str(on_ray), *flags]
    done = subprocess.run(
        preftune_command("train", *args, "--launcher", "ray", "--nproc-per-node", "2"),
        env=ray_env(tmp_path / "home"),
        capture_output=True,
        timeout=600,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out[-3000:] + done.stderr.decode()[-3000:]
    report = json.loads((on_ray / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["strategy"] == "ddp" and report["status"] == "completed"
    assert [x["step"] for x in metric_lines(on_ray)] == [1, 2, 3]
    assert_same_training(one, on_ray)
    # Rank 0's events and step metrics came back to the driver: its milestones and the finished bar.
    assert "TRAINING_START" in out and "TRAINING_COMPLETE" in out and "done: 3 steps" in out, out[-3000:]
