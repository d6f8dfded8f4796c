"""Launch one training run on several processes through torchrun (`torch.distributed.run`).

`preftune train --nproc-per-node N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT]` re-executes
itself as `python -m torch.distributed.run ... -m preftune.cli.main train ...`: torchrun starts N
processes on this node, sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE for each, restarts
none of them (`--max-restarts 0`: a dead rank ends the run, which resumes from its last
checkpoint with `--resume`), and every process runs the same `preftune train` command.
One node: `--standalone` (a free local port). Several nodes: every node runs the same command
with its own `--node-rank`, and `--rdzv-endpoint` is node 0's address (static rendezvous).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from preftune.errors import InvalidRequestError


def torchrun_command(
    program: Sequence[str],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    module: str = "preftune.cli.main",
) -> list[str]:
    """The command that runs `python -m <module> <program...>` on nproc_per_node x nnodes processes."""
    if nproc_per_node < 1 or nnodes < 1:
        raise InvalidRequestError("--nproc-per-node and --nnodes must be at least 1", param="nproc_per_node")
    if not 0 <= node_rank < nnodes:
        raise InvalidRequestError(f"--node-rank must be in 0..{nnodes - 1}", param="node_rank")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc_per_node}",
        f"--nnodes={nnodes}",
        "--max-restarts=0",
    ]
    if nnodes > 1 and not rdzv_endpoint:
        raise InvalidRequestError(
            "--nnodes > 1 needs --rdzv-endpoint HOST:PORT (an address of node 0 every node can reach)",
            param="rdzv_endpoint",
        )
    if rdzv_endpoint:
        command += [f"--node-rank={node_rank}", f"--rdzv-endpoint={rdzv_endpoint}"]
    else:
        command.append("--standalone")
    return [*command, "-m", module, *program]


def threads_per_process(nproc_per_node: int) -> int:
    """CPU threads for each of a node's processes: its cores shared out (torchrun would say 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc_per_node)
