"""`preftune eval MODEL_OR_ADAPTER FILE`: held-out figures of a model or adapter beside its base model.

Locally (the default) it loads the model itself: MODEL is an adapter directory, the output directory
of `preftune train`, a model directory or a model name. With `--remote` the server's runner does it:
MODEL is a fine-tuned model's name (or a base model on the server) and FILE an uploaded file's id or a
local file (uploaded first).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from preftune.cli.common import console, handle_errors, make_client

# (key, label, how to show it): the figures in the order the table shows them.
ROWS: list[tuple[str, str]] = [
    ("preference_accuracy", "preference accuracy (log p)"),
    ("preference_accuracy_normalized", "preference accuracy (per token)"),
    ("loss", "DPO loss vs reference"),
    ("rewards/accuracies", "reward accuracy"),
    ("rewards/margins", "mean reward margin"),
    ("logps/chosen", "log p(preferred)"),
    ("logps/rejected", "log p(non-preferred)"),
]


def _fmt(value: Any) -> str:
    if not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def show_result(result: dict[str, Any]) -> None:
    """The figures as a table: base model, this model, and the change."""
    base = result.get("base") or {}
    mine = result.get("model") or {}
    table = Table(
        title=f"{result.get('model_name')} on {result.get('n_pairs')} held-out pairs (beta {result.get('beta')})"
    )
    table.add_column("figure")
    table.add_column("base", justify="right")
    table.add_column("model", justify="right")
    table.add_column("change", justify="right")
    for key, label in ROWS:
        b, m = base.get(key), mine.get(key)
        change = m - b if isinstance(m, int | float) and isinstance(b, int | float) else None
        table.add_row(label, _fmt(b), _fmt(m), ("+" if (change or 0) > 0 else "") + _fmt(change))
    console.print(table)


def _local(
    model: str, file: Path, base: str | None, beta: float, max_length: int, batch_size: int
) -> dict[str, Any]:
    from preftune.config import Settings
    from preftune.training.evaluation import clean, evaluate

    columns = (TextColumn("pairs"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("eval", total=None)
        result = evaluate(
            model,
            file,
            models_dir=Settings().models_dir,
            base=base,
            beta=beta,
            max_length=max_length,
            batch_size=batch_size,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            on_status=lambda message: progress.console.print(f"[dim]{message}[/]"),
        )
    return clean(result)


def _remote(
    model: str, file: str, base: str | None, beta: float, max_length: int, batch_size: int
) -> dict[str, Any]:
    from preftune.errors import PreftuneError

    with make_client() as client:
        file_id = file
        if Path(file).expanduser().is_file():
            uploaded = client.files.upload(file)
            console.print(f"[dim]uploaded {file} as {uploaded.id} ({uploaded.status})[/]")
            file_id = uploaded.id
        evaluation = client.evaluations.create(
            model=model, file=file_id, base=base, beta=beta, max_length=max_length, batch_size=batch_size
        )
        console.print(f"[dim]evaluation {evaluation.id} queued[/]")
        columns = (TextColumn("pairs"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("eval", total=None)

            def update(current: Any) -> None:
                done = (current.progress or {}).get("done")
                total = (current.progress or {}).get("total")
                if done is not None:
                    progress.update(task, completed=done, total=total)

            evaluation = client.evaluations.wait(evaluation.id, on_update=update)
    if evaluation.status != "completed" or evaluation.result is None:
        message = evaluation.error.message if evaluation.error else "no result"
        raise PreftuneError(f"evaluation {evaluation.id} failed: {message}")
    return {"id": evaluation.id, **evaluation.result}


@handle_errors
def eval_command(
    model: str = typer.Argument(
        ...,
        help="Adapter directory, `preftune train` output directory, model directory or name "
        "(with --remote: a fine-tuned model's name on the server).",
    ),
    file: str = typer.Argument(
        ..., help="Preference pairs to evaluate on (JSONL; with --remote also a file id)."
    ),
    base: str | None = typer.Option(
        None,
        "--base",
        help="Base model to compare with (default: the adapter's own base; a full model alone).",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    beta: float = typer.Option(0.1, "--beta", help="DPO beta of the loss and rewards."),
    max_length: int = typer.Option(1024, "--max-length", help="Longest prompt + answer in tokens."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per forward pass."),
    remote: bool = typer.Option(False, "--remote", help="Run it on the server (PREFTUNE_BASE_URL)."),
) -> None:
    """Held-out DPO loss, reward accuracy and margin, and the model's own preference accuracy, beside
    the base model's."""
    if remote:
        result = _remote(model, file, base, beta, max_length, batch_size)
    else:
        result = _local(model, Path(file), base, beta, max_length, batch_size)
    show_result(result)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"figures written to {json_out}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
