"""Run `training.trainer.train` on a Ray cluster, under Ray Train's `TorchTrainer`.

For teams with a Ray cluster (KubeRay, Anyscale, `ray start`): Ray places the workers (one per
GPU with `use_gpu`), sets up the torch.distributed process group (gloo on CPUs, NCCL on GPUs,
with the collective timeout) and runs `_worker` on each; `_worker` calls the same `train()` as
torchrun's processes do, which finds the process group already there (`distributed.start`), so
sharding, DDP/FSDP2, DCP checkpoints and rank-0 outputs are exactly as under torchrun. The output
directory must be on storage every node sees (as with torchrun on several nodes).

`ray[train]` is the optional `ray` extra: `pip install "preftune[ray]"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from preftune.contracts.spec import TrainingSpec
from preftune.training.callbacks import TrainCallbacks
from preftune.training.distributed import DEFAULT_COLLECTIVE_TIMEOUT_S, Launch


class _PrintEvents(TrainCallbacks):
    """Rank 0's events on the worker's stdout (Ray forwards it to the driver)."""

    def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
        print(f"{type} {message}", flush=True)


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: its place in the run from Ray's context, then the usual `train()`."""
    import ray.train

    from preftune.training.trainer import train

    context = ray.train.get_context()
    launch = Launch(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        local_rank=context.get_local_rank(),
        local_world_size=context.get_local_world_size(),
        collective_timeout_s=config["collective_timeout_s"],
    )
    result = train(
        TrainingSpec.model_validate(config["spec"]),
        model=config["model"],
        training_file=Path(config["training_file"]),
        output_dir=Path(config["output_dir"]),
        validation_file=Path(config["validation_file"]) if config["validation_file"] else None,
        models_dir=Path(config["models_dir"]),
        resume=config["resume"],
        callbacks=_PrintEvents(),
        device=config["device"],
        launch=launch,
    )
    if launch.rank == 0 and result.stopped:
        raise RuntimeError(f"training stopped at step {result.steps} of {result.total_steps}")


def train_on_ray(
    spec: TrainingSpec,
    *,
    model: str,
    training_file: Path,
    output_dir: Path,
    models_dir: Path,
    validation_file: Path | None = None,
    resume: bool = False,
    processes_per_node: int = 1,
    nodes: int = 1,
    use_gpu: bool = False,
    device: str = "auto",
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
) -> None:
    """Train on `processes_per_node x nodes` Ray workers of the cluster `ray.init()` connected to
    (a local one when none is running). Raises when a worker fails."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    output_dir = Path(output_dir).resolve()
    config = {
        "spec": spec.model_dump(mode="json") | {"wandb_api_key": _secret(spec)},
        "model": model,
        "training_file": str(Path(training_file).resolve()),
        "validation_file": str(Path(validation_file).resolve()) if validation_file else None,
        "output_dir": str(output_dir),
        "models_dir": str(Path(models_dir).resolve()),
        "resume": resume,
        "device": "cuda" if use_gpu and device == "auto" else device,
        "collective_timeout_s": collective_timeout_s,
    }
    trainer = TorchTrainer(
        _worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=processes_per_node * nodes, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=int(collective_timeout_s)),
        run_config=RunConfig(name="preftune", storage_path=str(output_dir / "ray")),
    )
    trainer.fit()


def _secret(spec: TrainingSpec) -> str | None:
    return spec.wandb_api_key.get_secret_value() if spec.wandb_api_key is not None else None
