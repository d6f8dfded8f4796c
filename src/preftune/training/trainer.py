"""`train()`: one local training run from a spec, a model and a data file to an output directory."""

from __future__ import annotations

from pathlib import Path

from preftune.errors import TrainingError
from preftune.training.callbacks import TrainCallbacks
from preftune.training.result import TrainResult
from preftune.training.spec import TrainingSpec


def train(
    spec: TrainingSpec,
    *,
    model: str,
    training_file: Path,
    output_dir: Path,
    validation_file: Path | None = None,
    models_dir: Path,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Train `model` on `training_file` as `spec` says; write outputs to `output_dir`."""
    raise TrainingError("the trainer loop is landing in the next commit")
