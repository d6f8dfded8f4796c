"""`preftune fine-tuning ...`: create, follow, cancel and download jobs on a server.

`create`'s flags are generated from `TrainingSpec.model_fields`, so their names, help
and defaults can never drift from the trainer's. A flag left out is not sent: the server
fills in `TrainingSpec`'s default (shown in `--help`).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from preftune.cli.common import (
    JSON_OPTION,
    console,
    fmt_number,
    fmt_time,
    handle_errors,
    make_client,
    print_fields,
    print_json,
    print_table,
)
from preftune.cli.spec_flags import parse_knob, spec_parameter
from preftune.contracts.spec import TrainingSpec

app = typer.Typer(no_args_is_help=True)

JOB_FIELDS = [
    "id",
    "status",
    "model",
    "training_file",
    "validation_file",
    "output_name",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "progress",
    "latest_metrics",
    "error",
]
# Metrics shown by `watch` and `retrieve`, with TRL's names.
WATCH_METRICS = [
    "loss",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
    "rewards/rejected",
    "lr",
    "grad_norm",
]


# --- create: one option per TrainingSpec field (preftune.cli.spec_flags) ---------------------
@handle_errors
def _create(
    *,
    training_file: str,
    model: str,
    validation_file: str | None,
    idempotency_key: str | None,
    json_output: bool,
    config: Path | None,
    processes_per_node: int | None = None,
    nodes: int | None = None,
    launcher: str | None = None,
    strategy: str | None = None,
    **knobs: Any,
) -> None:
    params: dict[str, Any] = {}
    given = {
        "processes_per_node": processes_per_node,
        "nodes": nodes,
        "launcher": launcher,
        "strategy": strategy,
    }
    resources = {name: value for name, value in given.items() if value is not None}
    if config is not None:
        # The YAML of `preftune train --config`; flags given on the command line win over it.
        params = TrainingSpec.from_yaml(config).model_dump(exclude_unset=True)
        if "wandb_api_key" in params and params["wandb_api_key"] is not None:
            params["wandb_api_key"] = params["wandb_api_key"].get_secret_value()
    params |= {name: parse_knob(name, value) for name, value in knobs.items() if value is not None}
    with make_client() as client:
        job = client.fine_tuning.create(
            training_file=training_file,
            model=model,
            validation_file=validation_file,
            idempotency_key=idempotency_key,
            resources=resources or None,
            **params,
        )
    if json_output:
        print_json(job)
        return
    console.print(f"created [bold]{job.id}[/] ({job.status}) on {job.model}")
    console.print(f"follow it: preftune fine-tuning watch {job.id}")


def _build_create() -> Any:
    fixed = [
        inspect.Parameter(
            "training_file",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str,
            default=typer.Option(..., "--training-file", "-t", help="Id of a processed file."),
        ),
        inspect.Parameter(
            "model",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str,
            default=typer.Option(
                ...,
                "--model",
                "-m",
                help="Base model name or directory on the server (e.g. smollm2-135m-instruct).",
            ),
        ),
        inspect.Parameter(
            "validation_file",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=typer.Option(None, "--validation-file", help="Id of a processed file to evaluate on."),
        ),
        inspect.Parameter(
            "idempotency_key",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=typer.Option(
                None, "--idempotency-key", help="Repeat a create safely: the same key returns the same job."
            ),
        ),
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Path | None,
            default=typer.Option(
                None,
                "--config",
                exists=True,
                dir_okay=False,
                help="A YAML file of knobs (flags override it).",
            ),
        ),
        inspect.Parameter(
            "processes_per_node",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=int | None,
            default=typer.Option(
                None,
                "--processes-per-node",
                min=1,
                help="Training processes for this job on its node (one per GPU), through torch.distributed.",
            ),
        ),
        inspect.Parameter(
            "nodes",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=int | None,
            default=typer.Option(
                None, "--nodes", min=1, help="Machines the job trains on (with --launcher ray)."
            ),
        ),
        inspect.Parameter(
            "launcher",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=typer.Option(
                None,
                "--launcher",
                help="torchrun (the runner's node, the default) or ray (the server's Ray cluster).",
            ),
        ),
        inspect.Parameter(
            "strategy",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=typer.Option(
                None,
                "--strategy",
                help="auto (DDP for LoRA, FSDP2 for full), ddp, or fsdp (shards LoRA's frozen base too).",
            ),
        ),
        inspect.Parameter(
            "json_output", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=JSON_OPTION
        ),
    ]
    knobs = [spec_parameter(name, field) for name, field in TrainingSpec.model_fields.items()]

    def create(**kwargs: Any) -> None:
        """Queue a fine-tuning job (every TrainingSpec knob is a flag; see --help)."""
        _create(**kwargs)

    params = fixed + knobs
    create.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    create.__annotations__ = {p.name: p.annotation for p in params}
    return create


app.command("create")(_build_create())


# --- the rest ---------------------------------------------------------------------------
def _metric_summary(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    shown = ("loss", "rewards/accuracies")
    return "  ".join(f"{k}={fmt_number(metrics[k])}" for k in shown if metrics.get(k) is not None)


@app.command("list")
@handle_errors
def list_jobs(
    limit: int = typer.Option(20, "--limit", min=1, max=100, help="Jobs per page."),
    after: str | None = typer.Option(None, "--after", help="Cursor: the last job id of the previous page."),
    status: str | None = typer.Option(
        None, "--status", help="Only jobs in this state (queued, running, ...)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Your jobs, newest first."""
    with make_client() as client:
        page = client.fine_tuning.list(limit=limit, after=after, status=status)
    if as_json:
        print_json({"data": page.data, "has_more": page.has_more})
        return
    print_table(
        None,
        ["id", "status", "model", "step", "output", "created"],
        [
            [
                j.id,
                j.status,
                j.model,
                f"{j.progress.step}/{j.progress.total_steps or '?'}",
                j.output_name,
                fmt_time(j.created_at),
            ]
            for j in page.data
        ],
    )
    if page.has_more:
        console.print(f"more: preftune fine-tuning list --after {page.last_id}")


@app.command("retrieve")
@handle_errors
def retrieve(job_id: str = typer.Argument(..., help="ftjob-… id"), as_json: bool = JSON_OPTION) -> None:
    """A job's status, progress, latest metrics, hyperparameters and error."""
    with make_client() as client:
        job = client.fine_tuning.retrieve(job_id)
    if as_json:
        print_json(job)
        return
    print_fields(job, JOB_FIELDS)
    console.print("[bold]hyperparameters[/]:")
    for key, value in sorted(job.hyperparameters.items()):
        console.print(f"  {key} = {value}", highlight=False)


@app.command("cancel")
@handle_errors
def cancel(job_id: str = typer.Argument(..., help="ftjob-… id"), as_json: bool = JSON_OPTION) -> None:
    """Stop a job; it keeps its last checkpoint."""
    with make_client() as client:
        job = client.fine_tuning.cancel(job_id)
    if as_json:
        print_json(job)
    else:
        console.print(f"{job.id}: {job.status}")


@app.command("list-events")
@handle_errors
def list_events(
    job_id: str = typer.Argument(..., help="ftjob-… id"),
    after: str | None = typer.Option(None, "--after", help="Only events after this event id."),
    limit: int = typer.Option(100, "--limit", min=1, max=1000),
    as_json: bool = JSON_OPTION,
) -> None:
    """A job's events, oldest first."""
    with make_client() as client:
        page = client.fine_tuning.list_events(job_id, after=after, limit=limit)
    if as_json:
        print_json({"data": page.data, "has_more": page.has_more})
        return
    print_table(
        None,
        ["time", "type", "level", "message"],
        [[fmt_time(e.created_at), e.type, e.level, e.message] for e in page.data],
    )


@app.command("list-metrics")
@handle_errors
def list_metrics(job_id: str = typer.Argument(..., help="ftjob-… id"), as_json: bool = JSON_OPTION) -> None:
    """Per-step training metrics."""
    with make_client() as client:
        points = client.fine_tuning.list_metrics(job_id)
    if as_json:
        print_json(points)
        return
    rows = [p.model_dump() for p in points]
    columns = ["step", *[k for k in WATCH_METRICS if any(k in r for r in rows)]]
    print_table(None, columns, [[r.get(c) for c in columns] for r in rows])


@app.command("list-checkpoints")
@handle_errors
def list_checkpoints(
    job_id: str = typer.Argument(..., help="ftjob-… id"), as_json: bool = JSON_OPTION
) -> None:
    """A job's saved checkpoints (use with --from-checkpoint JOB_ID:STEP or download --step)."""
    with make_client() as client:
        checkpoints = client.fine_tuning.list_checkpoints(job_id)
    if as_json:
        print_json(checkpoints)
        return
    print_table(
        None,
        ["id", "step", "best", "created", "metrics"],
        [
            [c.id, c.step, "best" if c.best else "", fmt_time(c.created_at), _metric_summary(c.metrics)]
            for c in checkpoints
        ],
    )


@app.command("download")
@handle_errors
def download(
    job_id: str = typer.Argument(..., help="ftjob-… id"),
    output: Path = typer.Option(..., "-o", "--output", help="Directory to write the files into."),
    artifact: str = typer.Option(
        "adapter",
        "--artifact",
        help="adapter, model (full fine-tuning), merged, checkpoint (with --step), or best (the checkpoint "
        "with the lowest validation loss).",
    ),
    step: int | None = typer.Option(
        None, "--step", help="With --artifact checkpoint: which step (see list-checkpoints)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Download the trained adapter (or merged model, or a checkpoint) into a directory."""
    with make_client() as client:
        if as_json:
            path = client.fine_tuning.download(job_id, output, artifact=artifact, step=step)
            print_json({"job_id": job_id, "artifact": artifact, "path": str(path)})
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"{artifact} of {job_id}", total=None)

            def update(done: int, total: int | None) -> None:
                progress.update(task, completed=done, total=total)

            path = client.fine_tuning.download(
                job_id, output, artifact=artifact, step=step, on_progress=update
            )
    console.print(f"wrote {path}")


SPARK = "▁▂▃▄▅▆▇█"
# The curves `watch` draws in the terminal: (metric, label).
SPARK_METRICS = [("loss", "loss"), ("rewards/accuracies", "reward acc"), ("rewards/margins", "margin")]


def sparkline(values: list[float], width: int = 48) -> str:
    """A one-line chart of `values` (the last ones, averaged down to `width` columns), Rich-free text."""
    points = [v for v in values if isinstance(v, int | float) and v == v]
    if not points:
        return ""
    if len(points) > width:
        size = len(points) / width
        points = [
            sum(chunk) / len(chunk)
            for i in range(width)
            if (chunk := points[int(i * size) : max(int((i + 1) * size), int(i * size) + 1)])
        ]
    low, high = min(points), max(points)
    span = high - low or 1.0
    return "".join(SPARK[min(int((p - low) / span * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for p in points)


def _curves_view(history: list[dict[str, Any]]) -> Table:
    curves = Table.grid(padding=(0, 2))
    for key, label in SPARK_METRICS:
        values = [float(line[key]) for line in history if isinstance(line.get(key), int | float)]
        if values:
            curves.add_row(
                Text(label, style="dim"),
                Text(sparkline(values), style="cyan"),
                Text(f"{fmt_number(values[0])} -> {fmt_number(values[-1])}", style="dim"),
            )
    return curves


def _watch_view(job: Any, events: list[Any], history: list[dict[str, Any]] | None = None) -> Group:
    progress = job.progress
    total = progress.total_steps or 0
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("epoch {task.fields[epoch]}"),
        TextColumn("ETA {task.fields[eta]}"),
    )
    eta = (
        "-" if progress.eta_seconds is None else time.strftime("%H:%M:%S", time.gmtime(progress.eta_seconds))
    )
    bar.add_task(
        job.status, total=total or None, completed=progress.step, epoch=fmt_number(progress.epoch), eta=eta
    )
    metrics = Table.grid(padding=(0, 2))
    latest = job.latest_metrics or {}
    metrics.add_row(
        *[Text(f"{k} {fmt_number(latest.get(k))}") for k in ("loss", "rewards/accuracies", "rewards/margins")]
    )
    evaluated = getattr(job, "eval_metrics", None) or {}
    if evaluated:
        metrics.add_row(
            *[
                Text(f"eval {k} {fmt_number(evaluated.get(k))}", style="magenta")
                for k in ("loss", "rewards/accuracies", "preference_accuracy")
            ]
        )
    header = Text(f"{job.id}  {job.model}  attempts {job.attempts}", style="dim")
    recent = Table(show_header=False, box=None)
    for event in events[-8:]:
        recent.add_row(fmt_time(event.created_at), event.type, event.message)
    return Group(header, bar, metrics, _curves_view(history or []), recent)


@app.command("watch")
@handle_errors
def watch(
    job_id: str = typer.Argument(..., help="ftjob-… id"),
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="Seconds between polls."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Follow a job live: progress bar with ETA, loss and reward accuracy, events as they arrive.
    Exits 0 when the job completes, 1 if it fails or is cancelled."""
    events: list[Any] = []
    history: list[dict[str, Any]] = []  # train metric lines, for the terminal chart
    last_event: str | None = None
    with make_client() as client:

        def poll() -> Any:
            nonlocal last_event
            for event in client.fine_tuning.list_events(job_id, after=last_event):
                events.append(event)
                last_event = event.id
                if as_json:
                    print_json({"event": event})
            if not as_json:
                after = int(history[-1]["step"]) if history else None
                history.extend(
                    p.model_dump() for p in client.fine_tuning.list_metrics(job_id, after_step=after)
                )
            return client.fine_tuning.retrieve(job_id)

        if as_json:
            job = poll()
            while not job.done:
                time.sleep(interval)
                job = poll()
            print_json({"job": job})
        else:
            job = poll()
            with Live(_watch_view(job, events, history), console=console, refresh_per_second=4) as live:
                while not job.done:
                    time.sleep(interval)
                    job = poll()
                    live.update(_watch_view(job, events, history))
            if not console.is_terminal:
                console.print()  # Live leaves its last frame without a line end when not on a terminal
            console.print(
                f"{job.id}: [bold]{job.status}[/]"
                + (f" -> {job.output_name}" if job.output_name else "")
                + (f"\n{job.error.message}" if job.error else "")
            )
    if job.status != "completed":
        raise typer.Exit(1)
