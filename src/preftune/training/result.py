"""`TrainResult`: what `train()` hands back to its caller once a run ends (completed or stopped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class TrainResult:
    """Where the outputs are and how the run ended.

    `status` is `completed`, or `stopped` when `TrainCallbacks.should_stop()` asked the loop to stop
    (the weights at that point are still saved as a checkpoint, but no final `adapter/`/`model/` is written).
    """

    status: Literal["completed", "stopped"]
    output_dir: Path
    steps: int
    total_steps: int
    epoch: float
    adapter_path: Path | None = None
    model_path: Path | None = None
    merged_path: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)
    final_metrics: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def stopped(self) -> bool:
        return self.status == "stopped"

    @property
    def report_path(self) -> Path:
        return self.output_dir / "train_report.json"
