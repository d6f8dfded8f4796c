"""`preftune data convert`: other public preference formats into preftune's, or preference data into SFT data.

Exit codes: 0 the output was written and passes `files check`; 1 it was written but does not
pass (e.g. fewer than 3 examples survived); 2 usage errors (unknown format, unreadable input).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from preftune.cli.files_check import byte_progress, err, out
from preftune.data import validate_file
from preftune.data.convert import SOURCES, TARGETS, SourceError, Target, convert_file

app = typer.Typer(no_args_is_help=True)

SOURCE_HELP = (
    "Input format: hh-rlhf (Human:/Assistant: transcripts), trl (prompt/chosen/rejected), sharegpt "
    "(LLaMA-Factory conversations/chosen/rejected), ultrafeedback (scored chosen/rejected; ties dropped), "
    "stack-exchange (question/response_j/response_k), preftune (the canonical format, with --to sft)."
)


@app.command("convert")
def convert(
    input_path: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        readable=True,
        metavar="IN",
        help="Source file: JSON Lines (.gz read transparently) or one JSON array.",
    ),
    output_path: Path = typer.Argument(
        ..., dir_okay=False, metavar="OUT", help="Output JSON Lines file (gzip when it ends in .gz)."
    ),
    source: str | None = typer.Option(None, "--from", help=SOURCE_HELP),
    to: str = typer.Option(
        "preference",
        "--to",
        help="preference (default) or sft: context + preferred answer "
        "as an SFT `messages` conversation, for SFT-then-DPO.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the conversion report as JSON."),
    max_problems: int = typer.Option(100, "--max-problems", min=0, help="List at most this many problems."),
) -> None:
    """Convert a preference data set into preftune's format (or into SFT data with --to sft)."""
    if to not in TARGETS:
        raise typer.BadParameter(f"choose preference or sft, not {to!r}", param_hint="--to")
    if source is None:
        if to != "sft":
            raise typer.BadParameter(
                f"name the input format: one of {', '.join(s for s in SOURCES)}", param_hint="--from"
            )
        source = "preftune"
    if source not in SOURCES:
        raise typer.BadParameter(
            f"unknown format {source!r}; choose one of {', '.join(SOURCES)}", param_hint="--from"
        )
    target: Target = "sft" if to == "sft" else "preference"
    try:
        with byte_progress(input_path, "converting", enabled=not as_json) as progress:
            report = convert_file(
                input_path,
                output_path,
                source=source,
                to=target,
                max_problems=max_problems,
                progress=progress,
            )
    except (SourceError, ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    check = validate_file(output_path, max_errors=10)
    if as_json:
        import json

        payload = {**report.to_dict(), "output": str(output_path), "output_check": check.to_dict()}
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        kind = "SFT" if target == "sft" else "preference"
        out.print(
            f"{input_path} ({source}) -> {output_path} ({kind}): read {report.n_read:,} {report.unit}s, "
            f"wrote {report.n_written:,} examples"
        )
        for reason, count in report.dropped.items():
            out.print(f"dropped {count:,}: {reason}")
        if report.n_problems_total:
            shown = len(report.problems)
            out.print(
                f"[bold]not converted ({report.n_problems_total:,}"
                f"{'' if shown == report.n_problems_total else f', first {shown:,} listed'})[/]"
            )
            for problem in report.problems:
                where = f"{report.unit} {problem.line}" + (f", {problem.field}" if problem.field else "")
                out.print(f"  {where}: {problem.message}", markup=False)
        if check.ok:
            out.print(
                f"[green]the output passes files check[/] ({check.n_examples:,} examples, "
                f"{check.n_warnings_total:,} warnings: see `preftune files check {output_path}`)"
            )
        else:
            out.print(f"[red]the output does not pass files check[/]: {check.summary()}", markup=True)
    raise typer.Exit(0 if check.ok else 1)
