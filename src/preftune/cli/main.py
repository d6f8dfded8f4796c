"""The `preftune` command: one Typer app, one sub-module per command group.

Each group lives in its own module (`preftune.cli.<group>`) and is registered here;
heavy imports (torch, transformers, the server) happen inside the commands, so
`preftune --help` stays instant.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="preftune",
    help="Self-hosted preference fine-tuning: DPO, SimPO, RPO and SFT with an OpenAI-compatible API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (module, name on the command line, help). A module exposes `app` (a Typer group)
# or `register(app)` to add top-level commands.
GROUPS: list[tuple[str, str, str]] = [
    ("preftune.cli.files", "files", "Check, upload and manage data files."),
    ("preftune.cli.data", "data", "Convert other preference formats into preftune's."),
    ("preftune.cli.models", "models", "List and import base models."),
    ("preftune.cli.fine_tuning", "fine-tuning", "Create, watch and manage fine-tuning jobs on a server."),
    ("preftune.cli.keys", "keys", "Manage API keys."),
    ("preftune.cli.deployments", "deployments", "Keep models loaded for chat."),
]
TOP_LEVEL: list[str] = [
    "preftune.cli.train",  # preftune train
    "preftune.cli.server",  # preftune serve, preftune worker
    "preftune.cli.chat",  # preftune chat
    "preftune.cli.demo",  # preftune demo
    "preftune.cli.evaluate",  # preftune eval
]


def _register() -> None:
    for module_name, name, help_text in GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        app.add_typer(module.app, name=name, help=help_text)
    for module_name in TOP_LEVEL:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
