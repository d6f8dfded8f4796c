"""`preftune models ...`: list the base models this machine can train, import one ahead of time.

Works locally, without a server: models live under `PREFTUNE_HOME/models/`. Importing the embedded
default (dequantising its GGUF) takes about 40 s on a laptop CPU, so `import` does it once, up front,
with a spinner, instead of surprising the first training job.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from preftune.cli.common import JSON_OPTION, console, err_console, handle_errors, print_json
from preftune.config import Settings
from preftune.errors import InvalidRequestError, ModelNotFoundError

app = typer.Typer(no_args_is_help=True)

# Imported names become `--model` values and directory names: keep them plain.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

NAME_ARGUMENT = typer.Argument(
    ..., help="An embedded model (smollm2-135m-instruct) or a directory holding a Hugging Face model."
)
AS_OPTION = typer.Option(
    None, "--as", help="Name to import a directory under (default: the directory's name)."
)


def _model_rows(models_dir: Path) -> list[dict[str, Any]]:
    from preftune.contracts.base_models import list_models

    return [
        {
            "name": info.name,
            "source": info.source,
            "imported": info.path is not None,
            "available": info.available,
            "path": str(info.path) if info.path else None,
            "description": info.description,
        }
        for info in list_models(models_dir)
    ]


@app.command("list")
@handle_errors
def list_command(json_output: bool = JSON_OPTION) -> None:
    """Show embedded and imported base models (names you can pass as --model)."""
    settings = Settings()
    rows = _model_rows(settings.models_dir)
    if json_output:
        print_json(rows)
        return
    table = Table(title=f"Models in {settings.models_dir}", header_style="bold")
    table.add_column("name", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("status")
    table.add_column("description")
    for row in rows:
        if row["imported"]:
            status = "[green]imported[/]"
        elif row["available"]:
            status = "not imported yet (preftune models import)"
        else:
            status = "[red]missing its package[/]"
        table.add_row(row["name"], row["source"], status, row["description"])
    console.print(table)


def _copy_model_dir(source: Path, target: Path) -> Path:
    """Copy a Hugging Face model directory into the models dir, atomically (temp sibling, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        staged = tmp / "model"
        shutil.copytree(source, staged)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def import_model(name: str, models_dir: Path, as_name: str | None = None) -> tuple[Path, bool]:
    """Import `name` into `models_dir`; return (path, whether anything was imported just now)."""
    from preftune.contracts.base_models import EMBEDDED_MODELS, import_embedded

    if name in EMBEDDED_MODELS:
        target = models_dir / name
        already = (target / "config.json").is_file()
        return import_embedded(EMBEDDED_MODELS[name], models_dir), not already
    source = Path(name).expanduser()
    if not (source / "config.json").is_file():
        known = ", ".join(EMBEDDED_MODELS)
        raise ModelNotFoundError(
            f"cannot import '{name}': it is neither an embedded model ({known}) nor a directory holding a "
            "Hugging Face model (config.json, weights and tokenizer)",
            param="name",
            code="model_not_found",
        )
    model_name = as_name or source.resolve().name
    if model_name in EMBEDDED_MODELS or not MODEL_NAME_RE.fullmatch(model_name):
        raise InvalidRequestError(
            f"cannot import under the name '{model_name}': use --as with letters, digits, '-', '_' or '.', "
            "not an embedded model's name",
            param="as",
        )
    target = models_dir / model_name
    if (target / "config.json").is_file():
        return target, False
    return _copy_model_dir(source, target), True


@app.command("import")
@handle_errors
def import_command(
    name: str = NAME_ARGUMENT, as_name: str | None = AS_OPTION, json_output: bool = JSON_OPTION
) -> None:
    """Import a model now so the first job does not wait (the embedded default takes about 40 s)."""
    settings = Settings()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=json_output,
    ) as progress:
        progress.add_task(f"Importing {name} into {settings.models_dir}", total=None)
        path, imported = import_model(name, settings.models_dir, as_name)
    published = _publish(settings, path)
    if json_output:
        result: dict[str, object] = {"name": path.name, "path": str(path), "imported": imported}
        if settings.blob_url and settings.blob_url.startswith("s3://"):
            result["published"] = published  # uploaded to the bucket just now
        print_json(result)
    elif imported:
        console.print(f"[green]Imported[/] {path.name} to {path}", highlight=False)
    else:
        console.print(f"{path.name} is already imported at {path}", highlight=False)
    if published:
        console.print(
            f"Uploaded {path.name} to the blob store, for runners on other machines", highlight=False
        )


def _publish(settings: Settings, path: Path) -> bool:
    """With a remote blob store (PREFTUNE_BLOB_URL=s3://...), put an imported directory model in the
    bucket so that `preftune runner` on any machine can fetch it by name."""
    from preftune.service.artifacts import publish_imported_model

    return publish_imported_model(settings, path.name, path)
