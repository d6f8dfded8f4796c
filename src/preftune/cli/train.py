"""`preftune train`: one local training run, no server, with a live progress bar.

Every `TrainingSpec` knob is a flag (generated from the spec, as for `fine-tuning create`);
`--config spec.yaml` supplies knobs from a file, and flags given on the command line win over
it. Ctrl-C stops at the next micro-batch and keeps the last checkpoint: `--resume` continues.
"""

from __future__ import annotations

import inspect
import signal
from pathlib import Path
from types import FrameType
from typing import Any, get_args

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from preftune.cli.common import console, fmt_number, handle_errors
from preftune.cli.spec_flags import parse_knob, spec_parameter
from preftune.contracts.resources import Launcher, StrategyName
from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError
from preftune.training.callbacks import TrainCallbacks
from preftune.training.result import TrainResult


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressDisplay(TrainCallbacks):
    """Rich progress bar (step, loss, reward accuracy, pairs/s, ETA) and one line per milestone.

    The first Ctrl-C asks the trainer to stop cleanly; a second one interrupts at once.
    """

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None
        self.stop_requested = False

    def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
        if type == "TRAINING_START":
            self.task = self.progress.add_task(
                "training", total=data["total_steps"], completed=data.get("start_step", 0), stats="", eta=""
            )
        self.progress.console.print(f"[dim]{type}[/] {message}", highlight=False)

    def on_step(self, metrics: dict[str, Any]) -> None:
        if self.task is None or metrics.get("split") == "eval":
            return
        parts = [f"loss {metrics['loss']:.4f}"]
        if metrics.get("rewards/accuracies") is not None:
            parts.append(f"acc {metrics['rewards/accuracies']:.2f}")
        rate = metrics.get("pairs_per_s", metrics.get("examples_per_s"))
        unit = "pairs/s" if "pairs_per_s" in metrics else "ex/s"
        if rate is not None:
            parts.append(f"{rate:.2f} {unit}")
        self.progress.update(
            self.task,
            completed=metrics["step"],
            stats="  ".join(parts),
            eta=_fmt_eta(metrics.get("eta_seconds")),
        )

    def should_stop(self) -> bool:
        return self.stop_requested

    def interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        self.progress.console.print("[yellow]stopping after this micro-batch (Ctrl-C again to abort)[/]")


def collect_spec(config: Path | None, knobs: dict[str, Any]) -> TrainingSpec:
    """Spec defaults, then the config file, then the flags that were given."""
    base: dict[str, Any] = {}
    if config is not None:
        base = TrainingSpec.from_yaml(config).model_dump(exclude_unset=True)
    flags = {name: parse_knob(name, value) for name, value in knobs.items() if value is not None}
    return TrainingSpec.from_params({**base, **flags})


@handle_errors
def _train(
    *,
    training_file: Path,
    model: str,
    output_dir: Path,
    validation_file: Path | None,
    config: Path | None,
    resume: bool,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    launcher: str = "torchrun",
    ray_address: str | None = None,
    strategy: str = "auto",
    **knobs: Any,
) -> None:
    from preftune.config import LaunchEnv, Settings
    from preftune.training.distributed import Launch

    spec = collect_spec(config, knobs)  # a bad knob fails here, before any process is started
    settings, env = Settings(), LaunchEnv()
    for flag, value, allowed in (("launcher", launcher, Launcher), ("strategy", strategy, StrategyName)):
        if value not in get_args(allowed):
            raise InvalidRequestError(f"--{flag} must be one of {', '.join(get_args(allowed))}", param=flag)
    if launcher == "ray":
        if rdzv_endpoint or node_rank:
            raise InvalidRequestError(
                "--node-rank and --rdzv-endpoint are torchrun's: Ray places the ranks itself (--nnodes N)",
                param="launcher",
            )
    elif nproc_per_node * nnodes > 1 and env.world_size == 1:
        _relaunch(env, nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    launch = Launch(
        rank=env.rank,
        world_size=env.world_size,
        local_rank=env.local_rank,
        local_world_size=env.local_world_size,
        collective_timeout_s=settings.collective_timeout_s,
        strategy=strategy,
    )
    columns = (
        TextColumn("step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[stats]}"),
        TextColumn("eta {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    main = launch.rank == 0  # the other ranks of a launch train silently
    with Progress(*columns, console=console, transient=False, disable=not main) as progress:
        display = ProgressDisplay(progress)
        previous = signal.signal(signal.SIGINT, display.interrupt)
        run: dict[str, Any] = {
            "model": model,
            "training_file": training_file,
            "output_dir": output_dir,
            "validation_file": validation_file,
            "models_dir": settings.models_dir,
            "resume": resume,
            "callbacks": display,
            "device": settings.device,
            "peak_flops": settings.peak_flops,
        }
        try:
            if launcher == "ray":
                result = _train_on_ray(spec, run, settings, ray_address, nproc_per_node, nnodes, strategy)
            else:
                from preftune.training.trainer import train

                result = train(spec, launch=launch, **run)
        finally:
            signal.signal(signal.SIGINT, previous)
    if not main:
        return
    if result.stopped:
        console.print(f"stopped at step {result.steps}/{result.total_steps}; continue with --resume")
        raise typer.Exit(130)
    final = result.adapter_path or result.model_path
    console.print(f"[green]done[/]: {result.steps} steps; weights in {final}")
    if result.merged_path:
        console.print(f"merged model in {result.merged_path}")
    held_out = result.report.get("evaluation")
    if held_out and held_out.get("base"):
        base, tuned = held_out["base"], held_out["model"]

        def pair(key: str) -> str:
            return f"{fmt_number(base.get(key))} -> {fmt_number(tuned.get(key))}"

        console.print(
            f"held-out ({held_out['n_pairs']} pairs): preference accuracy per token "
            f"{pair('preference_accuracy_normalized')}, summed {pair('preference_accuracy')}; "
            f"DPO loss {pair('loss')} (eval.json)"
        )
    console.print(f"metrics: {output_dir / 'metrics.jsonl'}  report: {result.report_path}")


def _train_on_ray(
    spec: TrainingSpec,
    run: dict[str, Any],
    settings: Any,
    address: str | None,
    processes_per_node: int,
    nodes: int,
    strategy: str,
) -> TrainResult:
    """The run on `processes_per_node x nodes` workers of a Ray cluster (a local one without an address)."""
    import ray

    from preftune.training import ray_launch

    connected = ray_launch.connect(address or settings.ray_address)
    try:
        return ray_launch.train_on_ray(
            spec,
            processes_per_node=processes_per_node,
            nodes=nodes,
            strategy=strategy,
            collective_timeout_s=settings.collective_timeout_s,
            **run,
        )
    finally:
        if connected:
            ray.shutdown()


def _relaunch(env: Any, nproc_per_node: int, nnodes: int, node_rank: int, rdzv_endpoint: str | None) -> None:
    """Replace this process with torchrun running the same `preftune train` on every process."""
    import os
    import sys

    from preftune.training.launcher import threads_per_process, torchrun_command

    command = torchrun_command(
        sys.argv[1:],
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        node_rank=node_rank,
        rdzv_endpoint=rdzv_endpoint,
    )
    threads = env.omp_num_threads or threads_per_process(nproc_per_node)
    console.print(f"[dim]launching {nproc_per_node * nnodes} processes: {' '.join(command[1:])}[/]")
    sys.stdout.flush()
    os.execve(command[0], command, {**os.environ, "OMP_NUM_THREADS": str(threads)})


def _option(name: str, annotation: Any, option: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


def build_command() -> Any:
    fixed = [
        _option("training_file", Path, typer.Option(..., "--training-file", "-t", help="JSONL data file.")),
        _option(
            "model",
            str,
            typer.Option(
                "smollm2-135m-instruct",
                "--model",
                "-m",
                help="Base model: smollm2-135m-instruct (embedded), a Hugging Face model directory, or a hub id "
                "already in the local cache.",
            ),
        ),
        _option(
            "output_dir",
            Path,
            typer.Option(..., "--output-dir", "-o", help="Where metrics, checkpoints and weights go."),
        ),
        _option(
            "validation_file",
            Path | None,
            typer.Option(None, "--validation-file", help="Data to evaluate on (n_evals times)."),
        ),
        _option(
            "config",
            Path | None,
            typer.Option(None, "--config", help="YAML file of knobs (flags on the command line win)."),
        ),
        _option(
            "resume",
            bool,
            typer.Option(False, "--resume", help="Continue from the last checkpoint in --output-dir."),
        ),
        _option(
            "nproc_per_node",
            int,
            typer.Option(
                1,
                "--nproc-per-node",
                min=1,
                help="Processes on this machine (one per GPU), launched through torchrun; the global batch "
                "(batch_size x gradient_accumulation_steps) is shared among all processes.",
            ),
        ),
        _option("nnodes", int, typer.Option(1, "--nnodes", min=1, help="Machines taking part (torchrun).")),
        _option(
            "node_rank",
            int,
            typer.Option(0, "--node-rank", min=0, help="This machine's index among --nnodes (0 first)."),
        ),
        _option(
            "rdzv_endpoint",
            str | None,
            typer.Option(
                None,
                "--rdzv-endpoint",
                help="HOST:PORT of node 0, which every node can reach (several nodes).",
            ),
        ),
        _option(
            "launcher",
            str,
            typer.Option(
                "torchrun",
                "--launcher",
                help="torchrun (processes of this machine, or --nnodes machines each running this command) "
                "or ray (Ray Train workers of a Ray cluster: the ray extra).",
            ),
        ),
        _option(
            "ray_address",
            str | None,
            typer.Option(
                None,
                "--ray-address",
                help="With --launcher ray: the cluster (auto, ray://head:10001, head:6379); default "
                "PREFTUNE_RAY_ADDRESS, else a local Ray.",
            ),
        ),
        _option(
            "strategy",
            str,
            typer.Option(
                "auto",
                "--strategy",
                help="How several processes share the model: auto (DDP for LoRA, FSDP2 for full "
                "fine-tuning), ddp, fsdp (shards LoRA's frozen base too).",
            ),
        ),
    ]
    knobs = [spec_parameter(name, field) for name, field in TrainingSpec.model_fields.items()]

    def train_command(**kwargs: Any) -> None:
        """Train locally: DPO, SimPO, RPO or SFT, with LoRA or full fine-tuning."""
        _train(**kwargs)

    params = fixed + knobs
    train_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    train_command.__annotations__ = {p.name: p.annotation for p in params}
    return train_command


def register(app: typer.Typer) -> None:
    app.command("train")(build_command())
