"""What a job asks of the machines: processes per node and nodes (`resources` of a job).

The API's create body, the SDK, the CLI (`fine-tuning create --processes-per-node N`) and the
runner read this one model. The runner launches `processes_per_node` processes of one job on its
node through torch.distributed's launcher (one per GPU on CUDA); several `nodes` need a cluster
launcher (Ray, `preftune ray-train`), so the local runner refuses them with a named error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from preftune.errors import InvalidRequestError


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    processes_per_node: int = Field(
        default=1, ge=1, le=64, description="Training processes on each node (one per GPU on CUDA)."
    )
    nodes: int = Field(default=1, ge=1, le=1024, description="Machines the job runs on.")

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
            raise InvalidRequestError(f"{where}: {error['msg']}", param=where) from None
