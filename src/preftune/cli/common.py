"""Helpers shared by the CLI commands that talk to a server: the client, `--json`, errors.

Exit codes: 0 ok; 1 server or connection failure; 2 invalid input (also Typer's usage
errors); 3 authentication; 4 not found.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from preftune import errors

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)

JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON (for scripts).")


def make_client() -> Any:
    """A `preftune.Client` from the environment or the local server's credentials file."""
    from preftune.client import Client

    return Client()


def exit_code_for(exc: errors.PreftuneError) -> int:
    status = getattr(exc, "status_code", 500)
    if status == 401 or status == 403:
        return 3
    if status == 404:
        return 4
    if 400 <= status < 500:
        return 2
    return 1


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Print a `PreftuneError` as one readable line (naming the parameter) and exit non-zero."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except errors.PreftuneError as exc:
            where = f" [param: {exc.param}]" if exc.param else ""
            # soft_wrap: one line per error, so it can be grepped and copied whole.
            err_console.print(
                f"[bold red]error:[/] {escape(exc.message + where)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(exit_code_for(exc)) from None
        except ValidationError as exc:
            if exc.title != "Settings":  # a bug's validation error, not the user's environment
                raise
            for line in settings_errors(exc):
                err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def settings_errors(exc: ValidationError) -> list[str]:
    """A bad environment variable as the variable users set: `PREFTUNE_PEAK_FLOPS: Input should be ...`."""
    from preftune.config import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        variable = name if name.isupper() else f"{prefix}{name.upper()}"  # aliases are AWS_* already
        lines.append(f"{variable}: {error['msg']} (got {error.get('input')!r})")
    return lines


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")
    sys.stdout.flush()


def fmt_time(ts: int | float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def print_table(title: str | None, columns: list[str], rows: Iterable[list[Any]]) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        # Ids are copied into the next command: never cut them.
        table.add_column(column, no_wrap=column == "id", overflow="fold")
    for row in rows:
        table.add_row(*[fmt_number(cell) for cell in row])
    console.print(table)


def print_fields(obj: BaseModel | dict[str, Any], fields: list[str] | None = None) -> None:
    """An object as `name: value` lines."""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    for name in fields or list(data):
        value = data.get(name)
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        elif name.endswith("_at"):
            value = fmt_time(value)
        console.print(f"[bold]{name}[/]: {fmt_number(value)}", highlight=False)
