"""What a job asks of the machines: processes, nodes, launcher and strategy (`resources` of a job).

The API's create body, the SDK, the CLI (`fine-tuning create --processes-per-node N --launcher ray`)
and the runner read this one model. With `launcher: torchrun` (the default) the runner launches
`processes_per_node` processes of one job on its own node through torch.distributed's launcher (one
per GPU on CUDA), so `nodes` must be 1; with `launcher: ray` it hands the job's
`processes_per_node x nodes` ranks to Ray Train's TorchTrainer on the Ray cluster the runner is
configured for (`PREFTUNE_RAY_ADDRESS`; the `ray` extra). `strategy` says how the ranks share the
model (`training.distributed.STRATEGIES`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from preftune.errors import InvalidRequestError

Launcher = Literal["torchrun", "ray"]
StrategyName = Literal["auto", "ddp", "fsdp"]


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    processes_per_node: int = Field(
        default=1, ge=1, le=64, description="Training processes on each node (one per GPU on CUDA)."
    )
    nodes: int = Field(default=1, ge=1, le=1024, description="Machines the job runs on (launcher ray).")
    launcher: Launcher = Field(
        default="torchrun",
        description="torchrun: the runner's own node, through torch.distributed's launcher; ray: the "
        "workers of a Ray cluster, through Ray Train's TorchTrainer (the ray extra).",
    )
    strategy: StrategyName = Field(
        default="auto",
        description="How several processes share the model: auto (DDP for LoRA, FSDP2 for full "
        "fine-tuning), ddp (a replica on each), fsdp (sharded, LoRA's frozen base too: for a base "
        "that does not fit one device).",
    )

    @model_validator(mode="after")
    def _nodes_need_a_cluster(self) -> Resources:
        if self.nodes > 1 and self.launcher != "ray":
            raise ValueError(
                "nodes > 1 needs launcher ray: the runner's torchrun launches on its own node only "
                "(or run `preftune train --nnodes` on every machine yourself)"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.nodes

    @classmethod
    def parse(cls, value: dict[str, Any] | None) -> Resources:
        """`value` checked, or the default (one process); a bad field is a 400 naming it."""
        try:
            return cls.model_validate(value or {})
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in ("resources", *error["loc"]))
            if not error["loc"]:  # a rule over several fields: the one it is about
                where = "resources.nodes"
            raise InvalidRequestError(f"{where}: {error['msg']}", param=where) from None
