"""Run `preftune.training.trainer.train` on several local processes (gloo), as torchrun would.

`spawn_train(world_size, spec, **train_kwargs)` starts `world_size` spawned processes, each
calling `train` with its `Launch`; it returns when all of them have finished and raises when one
failed (torch.multiprocessing reports the rank and its traceback).
"""

from __future__ import annotations

import os
from typing import Any

from helpers.ports import free_port


def _rank_main(rank: int, world_size: int, spec: dict[str, Any], kwargs: dict[str, Any]) -> None:
    from preftune.contracts.spec import TrainingSpec
    from preftune.training.distributed import Launch
    from preftune.training.trainer import train

    launch = Launch(
        rank=rank,
        world_size=world_size,
        local_rank=rank,
        local_world_size=world_size,
        collective_timeout_s=120,
    )
    train(TrainingSpec(**spec), launch=launch, **kwargs)


def spawn_train(world_size: int, spec: dict[str, Any], **kwargs: Any) -> None:
    """`train(TrainingSpec(**spec), **kwargs)` on `world_size` processes of one gloo group."""
    import torch.multiprocessing as mp

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    mp.start_processes(_rank_main, args=(world_size, spec, kwargs), nprocs=world_size, start_method="spawn")
