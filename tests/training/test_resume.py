"""Kill `preftune train` with SIGKILL after a checkpoint, resume it, and get the same losses."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.server import child_env, preftune_command
from preftune.contracts.spec import TrainingSpec
from preftune.training.trainer import train

KNOBS = {
    "max_length": 48,
    "batch_size": 2,
    # Enough steps after the first checkpoint that the run is still going when the test kills it.
    "n_epochs": 3,
    "max_steps": 24,
    "n_checkpoints": 12,
    "learning_rate": 2e-3,
    "precision": "fp32",
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.25,
    "lora_dropout": 0.1,
}


def cli(args: list[str], home: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        preftune_command("train", *args),
        env=child_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if line["split"] == "train"}


# A 24-step run, a CLI child and a resumed child: a long run, so `make test-fast` leaves it to CI.
@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    # The uninterrupted reference run, in-process.
    full = tmp_path / "full"
    train(
        TrainingSpec(**KNOBS),
        model=str(tiny_model_dir),
        training_file=pairs_file,
        output_dir=full,
        models_dir=tmp_path / "models",
    )

    out = tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in KNOBS.items()]
    args = [
        "--training-file",
        str(pairs_file),
        "--model",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        *flags,
    ]
    proc = cli(args, tmp_path / "home")
    first = out / "checkpoints" / "step-2" / "trainer_state.pt"
    deadline = time.monotonic() + 300
    while not first.is_file():
        if proc.poll() is not None:
            pytest.fail(f"preftune train exited early: {proc.stdout.read().decode() if proc.stdout else ''}")
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter").exists(), "the run was killed before it finished"
    killed_at = max(losses(out))
    assert killed_at < KNOBS["max_steps"]

    resumed = cli([*args, "--resume"], tmp_path / "home")
    output = resumed.communicate(timeout=600)[0].decode()
    assert resumed.returncode == 0, output
    assert "resumed at step" in output
    expected, got = losses(full), losses(out)
    assert sorted(got) == list(range(1, KNOBS["max_steps"] + 1)), "one line per step, none repeated"
    for step in range(3, KNOBS["max_steps"] + 1):
        assert got[step] == pytest.approx(expected[step], abs=1e-4), f"step {step}"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    report = json.loads((out / "train_report.json").read_text())
    assert report["resumed_from"].endswith(tuple(f"step-{n}" for n in range(2, KNOBS["max_steps"], 2)))
