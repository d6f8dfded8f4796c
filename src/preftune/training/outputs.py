"""What a run leaves in its output directory: `metrics.jsonl`, the final weights, `train_report.json`."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from preftune.training.checkpoint import atomic_dir, save_weights
from preftune.training.modeling import REFERENCE_ADAPTER, Policy

METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "train_report.json"


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf: a diverged metric is written as null rather than breaking every reader.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one JSON line per optimizer step (and per evaluation) and flushes it at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, line: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({k: _clean(v) for k, v in line.items()}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = []
        for raw in self.path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; the resumed run rewrites it
        return lines

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (a resumed run trains those steps again)."""
        kept = [line for line in self.read() if int(line.get("step", 0)) <= step]
        write_text_atomic(self.path, "".join(json.dumps(line) + "\n" for line in kept))


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(output_dir: Path, report: dict[str, Any]) -> None:
    write_text_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2, default=str) + "\n")


def write_final_weights(
    policy: Policy, output_dir: Path, state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """`adapter/` (PEFT) for LoRA, `model/` for full fine-tuning (from `state_dict` when given:
    the gathered weights of a sharded model)."""
    final = output_dir / ("adapter" if policy.lora else "model")
    with atomic_dir(final) as tmp:
        save_weights(policy, tmp, state_dict)
    return final


def write_merged(policy: Policy, output_dir: Path) -> Path:
    """`merged/`: the LoRA weights folded into the base model, loadable with `AutoModelForCausalLM`.

    Merging changes the model in memory, so this is the last thing a run does with it.
    """
    model: Any = policy.model
    if policy.lora:
        if policy.reference_adapter:
            model.delete_adapter(REFERENCE_ADAPTER)
        model = model.merge_and_unload()
    final = output_dir / "merged"
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        policy.tokenizer.save_pretrained(tmp)
    return final
