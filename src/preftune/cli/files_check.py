"""`preftune files check FILE`: validate a data file locally, before anything trains or uploads.

Exit codes: 0 the file can be trained on; 1 it cannot (the report says why, line by line);
2 usage errors (no such file, unknown model, bad option).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from preftune.data import Example, ValidationReport, validate_file
from preftune.data.types import FORMAT_NAMES
from preftune.errors import PreftuneError

PROGRESS_MIN_BYTES = 8 * 1024 * 1024  # below this a check is instant; a bar would only flicker
PROGRESS_MIN_EXAMPLES = 2000
DEFAULT_MAX_LENGTH = 1024  # TrainingSpec.max_length's default (kept equal by a test)

# soft_wrap: a report line (path, field, message) stays one line that grep and copy-paste can use.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def byte_progress(path: Path, label: str, *, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A Rich bar of bytes read with speed and ETA on stderr, for big files on a terminal; else None."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    if not enabled or size < PROGRESS_MIN_BYTES or not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=size)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or size)

        yield update


def _issue_lines(kind: str, issues: list[Any], total: int) -> None:
    shown = len(issues)
    head = f"{kind} ({total:,})" if shown == total else f"{kind} (first {shown:,} of {total:,})"
    out.print(f"[bold]{head}[/]")
    for issue in issues:
        out.print(f"  {issue}", markup=False)
    if total > shown:
        out.print(f"  ... and {total - shown:,} more {kind}")


def print_report(report: ValidationReport) -> None:
    """The human report: verdict first, then every error and warning, then token statistics."""
    what = FORMAT_NAMES.get(report.format or "", "no recognisable format")
    verdict = "[green]OK[/]: can be trained on" if report.ok else "[red]NOT OK[/]: cannot be trained on"
    plural = "" if report.n_examples == 1 else "s"
    out.print(f"{report.path}: {what}, {report.n_examples:,} example{plural}. {verdict}")
    if report.errors or report.n_errors_total:
        _issue_lines("errors", report.errors, report.n_errors_total)
    if report.warnings or report.n_warnings_total:
        _issue_lines("warnings", report.warnings, report.n_warnings_total)
    if report.token_stats:
        print_token_stats(report.token_stats)


def print_token_stats(stats: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"tokens ({stats['model']})", header_style="bold")
    for column in ("", "min", "median", "p95", "max"):
        table.add_column(column, justify="right" if column else "left")
    for part in ("prompt", "preferred", "non_preferred", "sequence"):
        if part in stats:
            s = stats[part]
            table.add_row(part, *[str(s[k]) for k in ("min", "median", "p95", "max")])
    out.print(table)
    out.print(
        f"truncated at --max-length {stats['max_length']}: {stats['truncated']:,} of "
        f"{stats['n_examples']:,} examples"
    )


def _counted(examples: Iterable[Example], total: int, *, enabled: bool) -> Iterator[Example]:
    """The examples, with a Rich bar of examples tokenised on stderr when it is worth one."""
    if not enabled or total < PROGRESS_MIN_EXAMPLES or not err.is_terminal:
        yield from examples
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("tokenising", total=total)
        for i, example in enumerate(examples, 1):
            if not i % 256:
                bar.update(task, completed=i)
            yield example


def token_statistics(
    path: Path, model: str, max_length: int, *, n_examples: int = 0, show_progress: bool = False
) -> dict[str, Any]:
    """Token statistics with the model's own tokenizer and chat template (raises PreftuneError)."""
    from preftune.config import Settings
    from preftune.contracts.token_report import token_statistics as collect_stats

    return collect_stats(
        path,
        model,
        max_length,
        Settings().models_dir,
        wrap=lambda examples: _counted(examples, n_examples, enabled=show_progress),
    )


def check(
    path: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        readable=True,
        help="Data file: .jsonl or .jsonl.gz, one JSON object a line.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (for scripts)."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Add token statistics with this model's tokenizer and "
        "chat template (name or Hugging Face directory).",
    ),
    max_length: int | None = typer.Option(
        None,
        "--max-length",
        min=1,
        help=f"With --model: count the examples longer than this many tokens (default {DEFAULT_MAX_LENGTH}).",
    ),
    max_errors: int = typer.Option(
        100, "--max-errors", min=0, help="List at most this many errors (and warnings)."
    ),
) -> None:
    """Validate a data file: its format, example count and every problem by line and field."""
    if max_length is not None and model is None:
        raise typer.BadParameter(
            "--max-length needs --model (the tokenizer to count with)", param_hint="--max-length"
        )
    with byte_progress(path, "checking", enabled=not as_json) as progress:
        report = validate_file(path, max_errors=max_errors, progress=progress)
    if model is not None:
        if report.ok:
            try:
                report.token_stats = token_statistics(
                    path,
                    model,
                    max_length or DEFAULT_MAX_LENGTH,
                    n_examples=report.n_valid,
                    show_progress=not as_json,
                )
            except PreftuneError as exc:
                where = f" [param: {exc.param}]" if exc.param else ""
                err.print(f"[bold red]error:[/] {exc.message}{where}")
                raise typer.Exit(2) from None
        elif not as_json:
            err.print("token statistics skipped: fix the errors first")
    if as_json:
        sys.stdout.write(report_json(report))
        sys.stdout.flush()
    else:
        print_report(report)
    raise typer.Exit(0 if report.ok else 1)


def report_json(report: ValidationReport) -> str:
    import json

    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
