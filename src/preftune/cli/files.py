"""`preftune files ...`: check a data file locally; upload and manage files on a server."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from preftune.cli.common import (
    JSON_OPTION,
    console,
    fmt_time,
    handle_errors,
    make_client,
    print_fields,
    print_json,
    print_table,
)

app = typer.Typer(no_args_is_help=True)

# Smaller uploads finish before a progress bar would be worth drawing.
PROGRESS_FROM_BYTES = 8 * 1024 * 1024

try:  # `check` is the data layer's; it works without a server.
    from preftune.cli.files_check import check
except ModuleNotFoundError as exc:  # pragma: no cover - only while the module is being written
    if exc.name != "preftune.cli.files_check":
        raise
else:
    app.command("check")(check)

FILE_FIELDS = [
    "id",
    "filename",
    "name",
    "bytes",
    "status",
    "status_details",
    "format",
    "n_examples",
    "sha256",
    "created_at",
]


def _print_report(report: dict) -> None:  # type: ignore[type-arg]
    errors = report.get("errors") or []
    warnings = report.get("warnings") or []
    counts = {k: v for k, v in report.items() if not isinstance(v, dict | list)}
    for key, value in counts.items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False)
    if errors:
        print_table(
            "errors",
            ["line", "field", "message"],
            [[e.get("line"), e.get("field"), e.get("message")] for e in errors],
        )
    if warnings:
        print_table("warnings", ["warning"], [[w if isinstance(w, str) else str(w)] for w in warnings])


@app.command("upload")
@handle_errors
def upload(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="JSONL data file."),
    name: str | None = typer.Option(None, "--name", help="A dataset name (lowercase letters, digits, '-')."),
    purpose: str = typer.Option("fine-tune", "--purpose", help="Only fine-tune is supported."),
    idempotency_key: str | None = typer.Option(
        None,
        "--idempotency-key",
        help="Repeat an upload safely: the same key returns the same file. Retries within one upload "
        "always reuse a key.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Upload a data file; the server validates it (status processed or error)."""
    with make_client() as client:
        if as_json or path.stat().st_size < PROGRESS_FROM_BYTES:
            file = client.files.upload(path, purpose=purpose, name=name, idempotency_key=idempotency_key)
        else:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task(f"uploading {path.name}", total=path.stat().st_size)
                file = client.files.upload(
                    path,
                    purpose=purpose,
                    name=name,
                    on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                    idempotency_key=idempotency_key,
                )
    if as_json:
        print_json(file)
    else:
        print_fields(file, FILE_FIELDS)
        if file.status == "error":
            console.print(f"[red]validation failed[/]: see `preftune files retrieve {file.id} --report`")
    if file.status == "error":
        raise typer.Exit(2)


@app.command("list")
@handle_errors
def list_files(
    limit: int = typer.Option(20, "--limit", min=1, max=100, help="Files per page."),
    after: str | None = typer.Option(None, "--after", help="Cursor: the last file id of the previous page."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Your uploaded files, newest first."""
    with make_client() as client:
        page = client.files.list(limit=limit, after=after)
    if as_json:
        print_json({"data": page.data, "has_more": page.has_more})
        return
    print_table(
        None,
        ["id", "filename", "name", "bytes", "status", "examples", "created"],
        [
            [f.id, f.filename, f.name, f.bytes, f.status, f.n_examples, fmt_time(f.created_at)]
            for f in page.data
        ],
    )
    if page.has_more:
        console.print(f"more: preftune files list --after {page.last_id}")


@app.command("retrieve")
@handle_errors
def retrieve(
    file_id: str = typer.Argument(..., help="file-… id"),
    report: bool = typer.Option(False, "--report", help="Show the full validation report."),
    as_json: bool = JSON_OPTION,
) -> None:
    """One file's details; with --report, every validation error and warning."""
    with make_client() as client:
        file = client.files.retrieve(file_id)
        full = client.files.report(file_id) if report else None
    if as_json:
        print_json({**file.model_dump(mode="json"), "report": full} if report else file)
        return
    print_fields(file, FILE_FIELDS)
    if full is not None:
        _print_report(full)


@app.command("content")
@handle_errors
def content(
    file_id: str = typer.Argument(..., help="file-… id or dataset name"),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="With -o: print {id, path, bytes, sha256} as JSON (stdout is the data otherwise).",
    ),
) -> None:
    """Download a file's content exactly as uploaded."""
    with make_client() as client:
        if output is None:
            sys.stdout.buffer.write(client.files.content(file_id))
            return
        client.files.download(file_id, output)
        if as_json:
            digest = hashlib.sha256(output.read_bytes()).hexdigest()
            print_json({"id": file_id, "path": str(output), "bytes": output.stat().st_size, "sha256": digest})
        else:
            console.print(f"wrote {output}")


@app.command("delete")
@handle_errors
def delete(file_id: str = typer.Argument(..., help="file-… id"), as_json: bool = JSON_OPTION) -> None:
    """Delete a file (jobs that used it keep their results)."""
    with make_client() as client:
        deleted = client.files.delete(file_id)
    if as_json:
        print_json(deleted)
    else:
        console.print(f"deleted {deleted.id}")
