"""Run `training.trainer.train` on a Ray cluster, under Ray Train's `TorchTrainer` (`--launcher ray`).

For teams with a Ray cluster (KubeRay, Anyscale, `ray start`): Ray places the workers (one per
GPU with `use_gpu`), sets up the torch.distributed process group (gloo on CPUs, NCCL on GPUs,
with the collective timeout) and runs `_worker` on each; `_worker` calls the same `train()` as
torchrun's processes do, which finds the process group already there (`distributed.start`), so
sharding, DDP/FSDP2, DCP checkpoints and rank-0 outputs are exactly as under torchrun. The output
directory must be on storage every node sees (as with torchrun on several nodes).

The driver (`preftune train --launcher ray`, or the runner's training child for a job with
`resources.launcher: ray`) and the workers talk through a small Ray actor (`_Channel`): rank 0's
events, metrics lines and result (or error) flow back to the driver's `TrainCallbacks`, and the
driver's `should_stop` (Ctrl-C, a cancelled job) flows out to every worker.

`ray[train]` is the optional `ray` extra: `pip install "preftune[ray]"`; nothing here imports
Ray until a run asks for it, and a missing Ray is an `InvalidRequestError` saying so.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError, PreftuneError, TrainingError
from preftune.training.callbacks import TrainCallbacks
from preftune.training.distributed import DEFAULT_COLLECTIVE_TIMEOUT_S, Launch
from preftune.training.result import TrainResult

INSTALL_HINT = 'pip install "preftune[ray]"'
PUMP_INTERVAL_S = 0.2  # how often the driver forwards rank 0's messages and its own stop request


def require_ray() -> Any:
    """The `ray` module with Ray Train, or an error naming the extra to install."""
    try:
        import ray
        import ray.train.torch  # Ray Train is the part a run needs
    except ImportError as exc:
        raise InvalidRequestError(
            f"the ray launcher needs Ray Train, which is not installed ({exc}): {INSTALL_HINT}",
            param="launcher",
            code="ray_not_installed",
        ) from exc
    return ray


def connect(address: str | None = None) -> bool:
    """Join the Ray cluster at `address` (`auto`, `ray://host:10001`, `host:6379`), or start a
    local one when `address` is None and `RAY_ADDRESS` is unset. True when this call connected
    (and so `ray.shutdown()` is the caller's), False when this process was connected already."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=True)
    return True


class _StopOnlyEvents(TrainCallbacks):
    """What a worker's `train()` reports to: rank 0's hooks go to the driver through the channel;
    every rank asks the driver whether to stop."""

    def __init__(self, channel: Any, report: bool) -> None:
        self.channel = channel
        self.report = report

    def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
        if self.report:
            self.channel.put.remote("event", (type, message, data))

    def on_step(self, metrics: dict[str, Any]) -> None:
        if self.report:
            self.channel.put.remote("step", metrics)

    def should_stop(self) -> bool:
        import ray

        return bool(ray.get(self.channel.stop_requested.remote()))


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
        strategy=config["strategy"],
    )
    channel = config["channel"]
    try:
        result = train(
            TrainingSpec.model_validate(config["spec"]),
            model=config["model"],
            training_file=Path(config["training_file"]),
            output_dir=Path(config["output_dir"]),
            validation_file=Path(config["validation_file"]) if config["validation_file"] else None,
            models_dir=Path(config["models_dir"]),
            resume=config["resume"],
            callbacks=_StopOnlyEvents(channel, report=launch.rank == 0),
            device=config["device"],
            peak_flops=config["peak_flops"],
            launch=launch,
        )
    except PreftuneError as exc:
        if launch.rank == 0:  # its own error, with its type (a user error is not retried)
            ray.get(channel.put.remote("error", exc))
        raise
    if launch.rank == 0:
        ray.get(channel.put.remote("result", result))


def _channel_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class _Channel:
        """Messages from rank 0 to the driver, and the driver's stop request to every worker."""

        def __init__(self) -> None:
            self.messages: list[tuple[str, Any]] = []
            self.stop = False

        def put(self, kind: str, body: Any) -> None:
            self.messages.append((kind, body))

        def take(self) -> list[tuple[str, Any]]:
            taken, self.messages = self.messages, []
            return taken

        def request_stop(self) -> None:
            self.stop = True

        def stop_requested(self) -> bool:
            return self.stop

    return _Channel


class _Pump:
    """On the driver: forwards the channel's messages to `callbacks` and `callbacks.should_stop()`
    to the channel, every PUMP_INTERVAL_S, until `close()` (which forwards what is left)."""

    def __init__(self, channel: Any, callbacks: TrainCallbacks) -> None:
        self.channel = channel
        self.callbacks = callbacks
        self.outcome: tuple[str, Any] | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="preftune-ray-pump", daemon=True)
        self.thread.start()

    def _forward(self) -> None:
        import ray

        for kind, body in ray.get(self.channel.take.remote()):
            if kind == "event":
                self.callbacks.on_event(*body)
            elif kind == "step":
                self.callbacks.on_step(body)
            elif self.outcome is None:  # result or error: rank 0's first word is its last
                self.outcome = (kind, body)

    def _run(self) -> None:
        stop_sent = False
        while not self.done.wait(PUMP_INTERVAL_S):
            self._forward()
            if not stop_sent and self.callbacks.should_stop():
                self.channel.request_stop.remote()
                stop_sent = True

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        self._forward()


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
    use_gpu: bool | None = None,
    device: str = "auto",
    peak_flops: float | None = None,
    strategy: str = "auto",
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Train on `processes_per_node x nodes` Ray workers of the cluster this process is connected
    to (`connect`; a local one when it is not). `use_gpu` None: GPUs when `device` names CUDA, or
    when it is `auto` and the cluster has GPUs. Rank 0's events and metrics go to `callbacks`;
    returns rank 0's `TrainResult`, raises rank 0's error (a `PreftuneError`, user errors kept as
    they are) or a `TrainingError` when a worker failed otherwise."""
    ray = require_ray()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        connect()
    if use_gpu is None:
        use_gpu = device.startswith("cuda") or (
            device == "auto" and ray.cluster_resources().get("GPU", 0) > 0
        )
    output_dir = Path(output_dir).resolve()
    channel = _channel_class().remote()
    config = {
        "spec": spec.model_dump(mode="json") | {"wandb_api_key": _secret(spec)},
        "model": model,
        "training_file": str(Path(training_file).resolve()),
        "validation_file": str(Path(validation_file).resolve()) if validation_file else None,
        "output_dir": str(output_dir),
        "models_dir": str(Path(models_dir).resolve()),
        "resume": resume,
        "device": "cuda" if use_gpu and device == "auto" else device,
        "peak_flops": peak_flops,
        "strategy": strategy,
        "collective_timeout_s": collective_timeout_s,
        "channel": channel,
    }
    trainer = TorchTrainer(
        _worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=processes_per_node * nodes, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=int(collective_timeout_s)),
        run_config=RunConfig(name="preftune", storage_path=str(output_dir / "ray")),
    )
    pump = _Pump(channel, callbacks or TrainCallbacks())
    failure: BaseException | None = None
    try:
        trainer.fit()
    except Exception as exc:  # Ray's TrainingFailedError: rank 0's own error is clearer, if it sent one
        failure = exc
    finally:
        pump.close()
        ray.kill(channel)
    if pump.outcome is not None and pump.outcome[0] == "error":
        raise pump.outcome[1] from failure
    if failure is not None:
        raise TrainingError(f"a Ray Train worker failed: {type(failure).__name__}: {failure}") from failure
    if pump.outcome is None:
        raise TrainingError("the Ray Train run ended without rank 0's result")
    result: TrainResult = pump.outcome[1]
    return result


def _secret(spec: TrainingSpec) -> str | None:
    return spec.wandb_api_key.get_secret_value() if spec.wandb_api_key is not None else None
