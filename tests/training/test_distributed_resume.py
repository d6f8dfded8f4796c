"""DCP checkpoints resume on another world size with the same continuation.

One uninterrupted 4-step run on 1 process, and the same through `preftune train --nproc-per-node 2`
(torchrun). Each run's output is cut back to its step-2 checkpoint, as a run killed after it would
leave it, and resumed on the other world size (2 -> 1 and 1 -> 2): steps 3 and 4 equal the
uninterrupted run's to 1e-5, and so do the final weights.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from helpers.distributed import spawn_train
from helpers.server import child_env, preftune_command

KNOBS: dict[str, Any] = {
    "max_length": 48,
    "batch_size": 1,
    "gradient_accumulation_steps": 4,
    "max_steps": 4,
    "n_checkpoints": 2,
    "learning_rate": 5e-3,
    "precision": "fp32",
    "lora_dropout": 0.0,
    "lr_scheduler_type": "cosine",
}


def _train_lines(out: Path) -> dict[int, dict[str, Any]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line for line in lines if line["split"] == "train"}


def _cut_back_to_step_2(src: Path, dest: Path) -> Path:
    """What a run killed right after its step-2 checkpoint leaves behind."""
    shutil.copytree(src, dest)
    for leftover in ("adapter", "train_report.json", "checkpoints/step-4"):
        path = dest / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    lines = (dest / "metrics.jsonl").read_text().splitlines(keepends=True)
    (dest / "metrics.jsonl").write_text("".join(lines[:2]))
    return dest


def _assert_same_continuation(reference: Path, resumed: Path) -> None:
    want, got = _train_lines(reference), _train_lines(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "grad_norm", "lr", "rewards/margins", "logps/chosen"):
            assert got[step][key] == pytest.approx(want[step][key], abs=1e-5, rel=1e-5), (step, key)
    a = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5, msg=name)
    report = json.loads((resumed / "train_report.json").read_text())
    assert report["resumed_from"].endswith("step-2")


@pytest.mark.slow
def test_resume_on_another_world_size(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    kwargs = {"model": str(tiny_model_dir), "training_file": pairs_file, "models_dir": tmp_path / "models"}
    one = tmp_path / "one"
    spawn_train(1, KNOBS, output_dir=one, **kwargs)

    two = tmp_path / "two"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in KNOBS.items()]
    args = ["-t", str(pairs_file), "-m", str(tiny_model_dir), "-o", str(two), "--nproc-per-node", "2", *flags]
    done = subprocess.run(
        preftune_command("train", *args), env=child_env(tmp_path / "home"), capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    assert json.loads((two / "train_report.json").read_text())["world_size"] == 2
    assert list((two / "checkpoints" / "step-2" / "dcp").glob("__1_*.distcp"))  # rank 1 wrote its own file

    two_to_one = _cut_back_to_step_2(two, tmp_path / "two-to-one")
    spawn_train(1, KNOBS, output_dir=two_to_one, resume=True, **kwargs)
    _assert_same_continuation(one, two_to_one)

    one_to_two = _cut_back_to_step_2(one, tmp_path / "one-to-two")
    spawn_train(2, KNOBS, output_dir=one_to_two, resume=True, **kwargs)
    _assert_same_continuation(one, one_to_two)
