"""The `ray` launcher: Ray Train's TorchTrainer on a local Ray cluster of 2 CPU workers runs the
same `train()` as torchrun's processes, and trains what one process trains (fp32, to 1e-5)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from helpers.distributed import spawn_train
from preftune.contracts.spec import TrainingSpec

pytestmark = pytest.mark.slow  # a local Ray cluster: about 3 minutes on a loaded 2-core machine
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


@pytest.fixture
def local_ray() -> Iterator[None]:
    # Ray's socket paths must stay under 108 bytes: a short directory of its own, not tmp_path.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_train_runs_the_same_training(
    local_ray: None, tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    from preftune.training.ray_launch import train_on_ray

    kwargs = {"model": str(tiny_model_dir), "training_file": pairs_file, "models_dir": tmp_path / "models"}
    one = tmp_path / "one"
    spawn_train(1, KNOBS, output_dir=one, **kwargs)
    on_ray = tmp_path / "ray-run"
    train_on_ray(TrainingSpec(**KNOBS), output_dir=on_ray, processes_per_node=2, device="cpu", **kwargs)

    report = json.loads((on_ray / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["strategy"] == "ddp" and report["status"] == "completed"
    a = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (on_ray / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in b] == [1, 2, 3]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5, rel=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], abs=1e-5, rel=1e-5)
    wa = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(on_ray / "adapter" / "adapter_model.safetensors"))
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=1e-5, msg=name)
