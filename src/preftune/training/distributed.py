"""Training on several processes: torch.distributed under torchrun (or Ray Train).

One run is the same computation on 1 or N processes (`docs/ARCHITECTURE.md`, "The trainer's step"):

- **data**: every rank tokenises the whole file and computes the same global order, so each
  optimizer step has the same pairs whatever the world size (`sampling.epoch_steps`). A step's
  pairs are dealt over the ranks by tokens (`shard_step`), each rank cuts its share into
  micro-batches and memory-sized passes, and ranks with fewer passes add zero-weight ones, so that
  every rank runs as many forward/backward passes as the others (DDP and FSDP need that);
- **normalisers**: computed from the whole step's examples, which every rank has: each rank divides
  its sums by the global pairs/tokens count, and the gradients summed over the ranks are the
  gradient of the whole step (DDP and FSDP average, so each rank's share is scaled by the world size);
- **strategies** (`Launch.strategy`, a job's `resources.strategy`): `auto` trains LoRA under DDP
  (`no_sync` on all passes but a step's last) and full fine-tuning under FSDP2 (`fully_shard` per
  decoder layer and at the root; bf16 mixed precision on CUDA, fp32 on the CPU); `fsdp` shards a
  LoRA run's frozen base too, for a base that does not fit one device (only the LoRA weights are
  trained, reduced and checkpointed); `ddp` replicates a full fine-tuning run;
- **metrics**: summed over the ranks (`reduce_totals`) and written by rank 0 only.

World size 1 takes none of these paths: `Group.single()` runs no collective and wraps no model.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, get_args

import torch
import torch.distributed as dist
from torch import nn

from preftune.contracts.resources import StrategyName
from preftune.training.logps import sequence_logps, split_model
from preftune.training.memory import split_by_tokens
from preftune.training.packing import PackedBatch
from preftune.training.sampling import micro_batches
from preftune.training.step import StepTotals

DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0
# auto: DDP for LoRA, FSDP2 for full fine-tuning; ddp: replicate the model; fsdp: shard it (LoRA too).
STRATEGIES: tuple[str, ...] = get_args(StrategyName)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a launch (torchrun's RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE) and how long a collective may wait before the run fails
    (PREFTUNE_COLLECTIVE_TIMEOUT_S)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S
    strategy: str = "auto"  # STRATEGIES: how several processes share the model


class Group:
    """The processes of one run: rank, world size, and the few collectives the trainer needs."""

    def __init__(self, rank: int, world_size: int, device: torch.device, owned: bool = False) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.owned = owned  # started by `start` (and so destroyed by `stop`), not by Ray

    @classmethod
    def single(cls, device: torch.device) -> Group:
        return cls(0, 1, device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks (float64 on the wire: sums of metrics stay exact enough)."""
        if not self.distributed:
            return tensor
        wire = tensor.to(self.device, torch.float64)
        dist.all_reduce(wire, op=dist.ReduceOp.SUM)
        return wire.to(tensor.device, tensor.dtype)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (a stop asked of rank 0 stops them all)."""
        if not self.distributed:
            return flag
        return bool(self.all_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def start(launch: Launch, device: torch.device) -> Group:
    """Join the run's process group: NCCL on CUDA, gloo on the CPU, with the collective timeout.

    A process group someone else set up (Ray Train's TorchTrainer) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), device)
    if launch.world_size <= 1:
        return Group.single(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(seconds=launch.collective_timeout_s),
        rank=launch.rank,
        world_size=launch.world_size,
    )
    return Group(dist.get_rank(), dist.get_world_size(), device, owned=True)


def stop(group: Group) -> None:
    """Leave the process group this module started (a no-op for world size 1, or Ray's group)."""
    if group.owned and dist.is_initialized():
        dist.destroy_process_group()


# --- data -----------------------------------------------------------------------------------------
def shard_step(ids: list[int], lengths: list[int], world_size: int) -> list[list[int]]:
    """Deal one step's examples over `world_size` ranks, balanced by tokens; each share keeps the
    step's order. Longest first, each to the rank holding the fewest tokens (then fewest examples,
    then lowest rank): deterministic, the same on every rank."""
    tokens = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    position = {i: k for k, i in enumerate(ids)}
    for i in sorted(ids, key=lambda i: (-lengths[i], position[i])):
        rank = min(range(world_size), key=lambda r: (tokens[r], len(shares[r]), r))
        shares[rank].append(i)
        tokens[rank] += lengths[i]
    return [sorted(share, key=position.__getitem__) for share in shares]


def rank_passes(
    ids: list[int], lengths: list[int], batch_size: int, tokens_per_forward: int, group: Group
) -> tuple[list[list[int]], int]:
    """This rank's passes over its share of `ids`, and how many of them (at the end) are padding.

    Every rank computes every rank's passes (cheap, no communication) and pads its own to the
    longest list with zero-weight passes over the step's shortest example.
    """

    def passes(share: list[int]) -> list[list[int]]:
        return [
            run
            for group_ids in micro_batches(share, batch_size)
            for run in split_by_tokens(group_ids, lengths, tokens_per_forward)
        ]

    if not group.distributed:
        return passes(ids), 0
    everyone = [passes(share) for share in shard_step(ids, lengths, group.world_size)]
    own = everyone[group.rank]
    padding = max(len(p) for p in everyone) - len(own)
    shortest = min(ids, key=lambda i: (lengths[i], i))
    return own + [[shortest]] * padding, padding


def reduce_totals(totals: StepTotals, group: Group) -> StepTotals:
    """A step's (or an evaluation's) totals summed over the ranks."""
    if not group.distributed:
        return totals
    keys = sorted(totals.metrics)
    flat = [totals.loss, float(totals.tokens)]
    for key in keys:
        flat += totals.metrics[key]
    summed = group.all_sum(torch.tensor(flat, dtype=torch.float64)).tolist()
    metrics = {key: [summed[2 + 2 * k], summed[3 + 2 * k]] for k, key in enumerate(keys)}
    return StepTotals(loss=summed[0], tokens=round(summed[1]), metrics=metrics)


# --- models ---------------------------------------------------------------------------------------
class LogpsModule(nn.Module):
    """`sequence_logps` as a module's forward, so DDP's and FSDP's hooks run around it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return sequence_logps(self.model, batch)


class Strategy:
    """How the trainer runs its forward passes and synchronises gradients.

    `logps(batch)` is the policy's forward; `grad_sync(last)` is entered around each pass's
    backward (gradients are exchanged only on a step's last pass); `loss_scale` multiplies each
    pass's share so that averaged gradients come out as sums."""

    name = "single"
    loss_scale = 1.0
    # Sharded weights: every forward is a collective, so every rank must run the same forwards (the
    # reference's and the final evaluation's too); replicated ones can forward on one rank alone.
    sharded = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def logps(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(self.model, batch)

    def plain_logps(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """A forward outside the gradient exchange (reference, evaluation): the model itself, unless
        its weights are sharded and only the wrapped forward gathers them."""
        return sequence_logps(self.model, batch)

    def grad_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 when they are sharded (FSDP), else None."""
        return None


class DDPStrategy(Strategy):
    name = "ddp"

    def __init__(self, model: nn.Module, group: Group) -> None:
        super().__init__(model)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [group.device.index] if group.device.type == "cuda" else None
        # Every rank built the same weights (the same files, the same LoRA seed): no start-up broadcast.
        self.ddp = DistributedDataParallel(
            LogpsModule(model), device_ids=device_ids, init_sync=False, gradient_as_bucket_view=True
        )
        self.loss_scale = float(group.world_size)

    def logps(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ddp(batch)  # type: ignore[no-any-return]

    def grad_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if last else self.ddp.no_sync()


class FSDPStrategy(Strategy):
    name = "fsdp"
    sharded = True

    def __init__(self, model: nn.Module, group: Group, param_dtype: torch.dtype | None) -> None:
        super().__init__(model)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
        )
        decoder, _ = split_model(model)
        for layer in getattr(decoder, "layers", []):
            fully_shard(layer, mp_policy=mp)
        # The root holds the embeddings, the final norm and the head (tied or not) as one group.
        self.root: Any = fully_shard(LogpsModule(model), mp_policy=mp)
        self.loss_scale = float(group.world_size)

    def logps(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.root(batch)  # type: ignore[no-any-return]

    def plain_logps(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.root(batch)  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def grad_sync(self, last: bool) -> Iterator[None]:
        self.root.set_requires_gradient_sync(last)
        try:
            yield
        finally:
            self.root.set_requires_gradient_sync(True)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # LoRA: only the trainable (adapter) weights are gathered, never the frozen base.
        frozen = any(not p.requires_grad for p in self.model.parameters())
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=frozen)
        return get_model_state_dict(self.model, options=options)  # type: ignore[return-value]


def choose_strategy(
    model: nn.Module, lora: bool, group: Group, param_dtype: torch.dtype | None, wanted: str = "auto"
) -> Strategy:
    """Single process: the model as it is. Several: `wanted` (STRATEGIES); `auto` is DDP for LoRA
    and FSDP2 for full fine-tuning."""
    if wanted not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {wanted!r}")
    if not group.distributed:
        return Strategy(model)
    if wanted == "ddp" or (wanted == "auto" and lora):
        return DDPStrategy(model, group)
    return FSDPStrategy(model, group, param_dtype if group.device.type == "cuda" else None)


def agreed(should_stop: Callable[[], bool], group: Group) -> Callable[[], bool]:
    """`should_stop` asked on every rank and agreed on (any rank's yes stops all, at the same pass)."""
    if not group.distributed:
        return should_stop
    return lambda: group.any(should_stop())
