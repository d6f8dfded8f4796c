"""The training child process: runs `preftune.training.trainer.train` for one job attempt and forwards
its events, metrics and outcome to the runner through a multiprocessing queue.

It never touches the database: the runner (which holds the lease) is the only writer for its job.
It stops when the runner sets the stop event (a cancel or a shutdown) or when the runner is gone
(its parent pid changed), so a killed runner never leaves an orphan training on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import traceback
from pathlib import Path
from typing import Any

from preftune.contracts.resources import Resources
from preftune.contracts.spec import TrainingSpec
from preftune.errors import DataValidationError, ModelNotFoundError, PreftuneError, TrainingSpecError
from preftune.training.callbacks import TrainCallbacks
from preftune.training.result import TrainResult

USER_ERRORS = (DataValidationError, TrainingSpecError, ModelNotFoundError)
# The child's stdout and stderr (library warnings, tracebacks) go here, inside the job directory.
LOG_FILE = "train.log"


def _log_to(path: Path) -> None:
    """Point file descriptors 1 and 2 at the job's log (appending: attempts follow one another).

    The log is a help, not the job: on a full disk its writes fail, and the attempt goes on (it fails
    at its first real write, with an error that says the disk is full, not at a log line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _say(f"--- attempt started, pid {os.getpid()} ---")


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(line, flush=True)


class ForwardingCallbacks(TrainCallbacks):
    """Puts every trainer hook on the queue; `should_stop` follows the stop event and the parent's life."""

    def __init__(self, queue: Any, stop_event: Any, parent_pid: int, runner_pid: int | None = None) -> None:
        self.queue = queue
        self.stop_event = stop_event
        self.parent_pid = parent_pid
        self.runner_pid = runner_pid  # a rank's parent is the launcher: the runner is one level up

    def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
        self.queue.put(("event", {"type": type, "message": message, "data": data}))

    def on_step(self, metrics: dict[str, Any]) -> None:
        self.queue.put(("step", metrics))

    def should_stop(self) -> bool:
        if self.stop_event.is_set() or os.getppid() != self.parent_pid:
            return True
        return self.runner_pid is not None and not _alive(self.runner_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def error_payload(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, PreftuneError):
        message, code, param = exc.message, exc.code, exc.param
    else:
        message, code, param = f"{type(exc).__name__}: {exc}", None, None
    return {
        "message": message,
        "code": code,
        "param": param,
        "user_error": isinstance(exc, USER_ERRORS),
        "traceback": traceback.format_exc(limit=20),
    }


def child_main(payload: dict[str, Any], queue: Any, stop_event: Any, parent_pid: int) -> None:
    """Entry point of the child (spawned): train, then put ("result", …) or ("error", …) on the queue.

    A job with `resources.processes_per_node` > 1 runs as that many ranks under torch.distributed's
    launcher (`_launch_ranks`); one with `resources.launcher` ray as Ray Train workers on the Ray
    cluster of PREFTUNE_RAY_ADDRESS (`_train_on_ray`, this process its driver). Rank 0 reports
    through the queue as a single process does.
    """
    # Ctrl-C reaches the whole process group; the runner decides how this child stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _log_to(Path(payload["output_dir"]) / LOG_FILE)
        resources = Resources.model_validate(payload.get("resources") or {})
        if resources.launcher == "ray":
            _train_on_ray(payload, queue, ForwardingCallbacks(queue, stop_event, parent_pid), resources)
        elif resources.processes_per_node > 1:
            _launch_ranks(payload, queue, stop_event, parent_pid, resources.processes_per_node)
        else:
            _train_rank(payload, queue, ForwardingCallbacks(queue, stop_event, parent_pid), None)
    except BaseException as exc:  # every failure must reach the runner as a message
        with contextlib.suppress(OSError, ValueError):  # the log may sit on a full disk
            traceback.print_exc()
        queue.put(("error", error_payload(exc)))
    finally:
        queue.close()
        queue.join_thread()


def evaluation_main(payload: dict[str, Any], queue: Any) -> None:
    """Entry point of an evaluation child (spawned): put ("progress", …) messages, then ("result", …) or
    ("error", …) on the queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from preftune.training.evaluation import clean, evaluate

        params = payload["params"]
        result = evaluate(
            payload["model_path"],
            Path(payload["file"]),
            models_dir=Path(payload["models_dir"]),
            base=payload.get("base_model_path"),
            beta=float(params["beta"]),
            max_length=int(params["max_length"]),
            batch_size=int(params["batch_size"]),
            on_progress=lambda done, total: queue.put(("progress", {"done": done, "total": total})),
        )
        result["model_name"] = payload["model"]
        result["file"] = payload["file_id"]
        queue.put(("result", clean(result)))
    except BaseException as exc:  # every failure must reach the runner as a message
        traceback.print_exc()
        queue.put(("error", error_payload(exc)))
    finally:
        queue.close()
        queue.join_thread()


def _train_rank(payload: dict[str, Any], queue: Any, callbacks: TrainCallbacks, launch: Any) -> None:
    """Run the trainer in this process; rank 0 (or the only process) puts the result on the queue."""
    from preftune.training.trainer import train

    result = train(_spec(payload), callbacks=callbacks, launch=launch, **_run_inputs(payload))
    if launch is None or launch.rank == 0:
        queue.put(("result", _result_message(result)))


def _result_message(result: TrainResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "steps": result.steps,
        "total_steps": result.total_steps,
        "adapter_path": str(result.adapter_path) if result.adapter_path else None,
        "model_path": str(result.model_path) if result.model_path else None,
        "merged_path": str(result.merged_path) if result.merged_path else None,
        "final_metrics": result.final_metrics,
    }


def _run_inputs(payload: dict[str, Any]) -> dict[str, Any]:
    """What `train()` and `train_on_ray()` both take from an attempt's payload: model, files, device,
    the device's peak for MFU."""
    return {
        "model": payload["model"],
        "training_file": Path(payload["training_file"]),
        "output_dir": Path(payload["output_dir"]),
        "validation_file": Path(payload["validation_file"]) if payload.get("validation_file") else None,
        "models_dir": Path(payload["models_dir"]),
        "resume": bool(payload.get("resume")),
        "device": payload.get("device", "auto"),
        "peak_flops": payload.get("peak_flops"),
    }


def _spec(payload: dict[str, Any]) -> TrainingSpec:
    spec = TrainingSpec.model_validate(payload["spec"])
    if payload.get("from_checkpoint_path"):
        spec = spec.model_copy(update={"from_checkpoint": payload["from_checkpoint_path"]})
    return spec


def _train_on_ray(
    payload: dict[str, Any], queue: Any, callbacks: TrainCallbacks, resources: Resources
) -> None:
    """The job's ranks as Ray Train workers; this process drives them and reports rank 0's result.

    A worker that dies fails Ray Train's run (no restarts), so the attempt fails and the runner
    retries it from the last checkpoint, as with torchrun's ranks."""
    import ray

    from preftune.config import Settings
    from preftune.training import ray_launch

    settings = Settings()
    connected = ray_launch.connect(payload.get("ray_address") or settings.ray_address)
    try:
        result = ray_launch.train_on_ray(
            _spec(payload),
            processes_per_node=resources.processes_per_node,
            nodes=resources.nodes,
            strategy=resources.strategy,
            collective_timeout_s=float(payload.get("collective_timeout_s") or settings.collective_timeout_s),
            callbacks=callbacks,
            **_run_inputs(payload),
        )
    finally:
        if connected:
            ray.shutdown()
    queue.put(("result", _result_message(result)))


def _launch_ranks(
    payload: dict[str, Any], queue: Any, stop_event: Any, runner_pid: int, processes: int
) -> None:
    """`processes` ranks of this job on this node through torch.distributed's launcher (what
    torchrun runs): a free local rendezvous, no restarts. A rank that dies makes the launcher stop
    the others and raise, so the attempt fails within the monitor interval (plus the collective
    timeout at worst) and the runner retries it from the last checkpoint."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(payload["job_id"]),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    elastic_launch(config, rank_main)(payload, queue, stop_event, os.getpid(), runner_pid)


def rank_main(payload: dict[str, Any], queue: Any, stop_event: Any, child_pid: int, runner_pid: int) -> None:
    """One rank of a multi-process job (started by `_launch_ranks`); rank 0 reports to the runner."""
    from preftune.config import LaunchEnv, Settings
    from preftune.training.distributed import Launch

    env = LaunchEnv()
    launch = Launch(
        rank=env.rank,
        world_size=env.world_size,
        local_rank=env.local_rank,
        local_world_size=env.local_world_size,
        collective_timeout_s=float(payload.get("collective_timeout_s") or Settings().collective_timeout_s),
        strategy=Resources.model_validate(payload.get("resources") or {}).strategy,
    )
    callbacks = ForwardingCallbacks(queue, stop_event, child_pid, runner_pid)
    try:
        _train_rank(payload, queue, callbacks, launch)
    except BaseException as exc:
        if launch.rank == 0:  # its own error, with its type (a user error is not retried)
            traceback.print_exc()
            queue.put(("error", error_payload(exc)))
        raise
