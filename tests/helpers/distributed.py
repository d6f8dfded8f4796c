"""Run `preftune.training.trainer.train` on several local processes (gloo), as torchrun would.

`spawn_train(world_size, spec, **train_kwargs)` starts `world_size` spawned processes, each
calling `train` with its `Launch`; it returns when all of them have finished and raises when one
failed (torch.multiprocessing reports the rank and its traceback). It returns what each rank's
`train` handed back that a test can check (`RankOutcome`): whether that rank ran the final
held-out evaluation, and the run's status. `assert_same_training(one, other)` checks two runs'
outputs for "N processes train what one trains": the same metric lines and final weights, to 1e-5.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from helpers.ports import free_port

# The step metrics two equal runs share (fp32: to 1e-5); an eval line compares its loss and margins.
COMPARED = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen")


@dataclass(frozen=True)
class RankOutcome:
    rank: int
    status: str
    evaluated: bool  # its result's report holds the final held-out evaluation


def _rank_main(
    rank: int, world_size: int, spec: dict[str, Any], kwargs: dict[str, Any], strategy: str, outcomes: str
) -> None:
    from preftune.contracts.spec import TrainingSpec
    from preftune.training.distributed import Launch
    from preftune.training.trainer import train

    launch = Launch(
        rank=rank,
        world_size=world_size,
        local_rank=rank,
        local_world_size=world_size,
        collective_timeout_s=120,
        strategy=strategy,
    )
    result = train(TrainingSpec(**spec), launch=launch, **kwargs)
    outcome = {"rank": rank, "status": result.status, "evaluated": "evaluation" in result.report}
    Path(outcomes, f"rank-{rank}.json").write_text(json.dumps(outcome))


def spawn_train(
    world_size: int, spec: dict[str, Any], strategy: str = "auto", **kwargs: Any
) -> list[RankOutcome]:
    """`train(TrainingSpec(**spec), **kwargs)` on `world_size` processes of one gloo group, under
    `strategy` (`Launch.strategy`); each rank's outcome, rank 0 first."""
    import torch.multiprocessing as mp

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    with tempfile.TemporaryDirectory(prefix="ranks-") as outcomes:
        mp.start_processes(
            _rank_main,
            args=(world_size, spec, kwargs, strategy, outcomes),
            nprocs=world_size,
            start_method="spawn",
        )
        return [
            RankOutcome(**json.loads(Path(outcomes, f"rank-{rank}.json").read_text()))
            for rank in range(world_size)
        ]


def metric_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path, lora: bool = True) -> dict[str, torch.Tensor]:
    return load_file(str(out / ("adapter/adapter_model.safetensors" if lora else "model/model.safetensors")))


def assert_same_training(one: Path, other: Path, lora: bool = True) -> None:
    """The runs in `one` and `other` logged the same steps with the same figures and ended with
    the same weights (fp32, to 1e-5)."""
    a, b = metric_lines(one), metric_lines(other)
    assert [(x["step"], x["split"]) for x in a] == [(x["step"], x["split"]) for x in b]
    for x, y in zip(a, b, strict=True):
        for key in COMPARED if x["split"] == "train" else ("loss", "rewards/margins"):
            assert y[key] == pytest.approx(x[key], abs=1e-5, rel=1e-5), (x["step"], x["split"], key)
    wa, wb = final_weights(one, lora), final_weights(other, lora)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=1e-5, msg=name)
