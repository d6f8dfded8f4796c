"""Several machines, tried on one: two torchrun "nodes" of one process each
(`preftune train --nnodes 2 --node-rank 0|1 --rdzv-endpoint 127.0.0.1:PORT`, the README's
multi-machine command) sharing one output directory train what one process trains (fp32, to 1e-5)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers.distributed import assert_same_training, metric_lines, spawn_train
from helpers.ports import free_port
from helpers.server import child_env, preftune_command

pytestmark = pytest.mark.slow  # two torchrun launches and a reference run: ~30-60 s on 2 cores

KNOBS: dict[str, Any] = {
    "max_length": 48,
    "batch_size": 1,
    "gradient_accumulation_steps": 4,
    "max_steps": 3,
    "n_checkpoints": 1,
    "learning_rate": 5e-3,
    "precision": "fp32",
    "lora_dropout": 0.0,
}


def test_two_nodes_of_one_process_train_what_one_process_trains(
    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    kwargs = {"model": str(tiny_model_dir), "training_file": pairs_file, "models_dir": tmp_path / "models"}
    one = tmp_path / "one"
    spawn_train(1, KNOBS, output_dir=one, **kwargs)

    shared = tmp_path / "shared-out"
    endpoint = f"127.0.0.1:{free_port()}"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in KNOBS.items()]
    args = ["-t", str(pairs_file), "-m", str(tiny_model_dir), "-o", str(shared), *flags]
    nodes = [
        subprocess.Popen(
            preftune_command(
                "train", *args, "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", endpoint
            ),
            env=child_env(tmp_path / f"home-{rank}", OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0].decode() for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-4000:]
    assert "done: 3 steps" in outputs[0] and "done:" not in outputs[1]  # node 1's rank trains silently

    report = json.loads((shared / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["status"] == "completed"
    assert list((shared / "checkpoints" / "step-3" / "dcp").glob("__1_*.distcp"))  # node 1 wrote its shard
    assert [x["step"] for x in metric_lines(shared) if x["split"] == "train"] == [1, 2, 3]
    assert_same_training(one, shared)
