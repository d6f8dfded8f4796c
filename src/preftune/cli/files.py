"""`preftune files ...`: check a data file locally; upload and manage files on a server."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)

try:  # `check` is the data layer's; it works without a server.
    from preftune.cli.files_check import check
except ModuleNotFoundError as exc:  # pragma: no cover - only while the module is being written
    if exc.name != "preftune.cli.files_check":
        raise
else:
    app.command("check")(check)
