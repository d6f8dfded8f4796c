"""Run `preftune.training.trainer.train` on several local processes (gloo), as torchrun would.

`spawn_train(world_size, spec, **train_kwargs)` starts `world_size` spawned processes, each
calling `train` with its `Launch`; it returns when all of them have finished and raises when one
failed (torch.multiprocessing reports the rank and its traceback). It returns what each rank's
`train` handed back that a test can check (`RankOutcome`): whether that rank ran the final
held-out evaluation, and the run's status.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.ports import free_port


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
