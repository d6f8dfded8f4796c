"""CLI flags generated from `TrainingSpec`: one option per knob, for `preftune train` and
`preftune fine-tuning create`, so names, help, defaults and groups are defined once (in the spec).

A flag left out arrives as None and is not sent, so the spec's default applies.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal

import typer
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from preftune.contracts.spec import TrainingSpec


def _cli_type(annotation: Any) -> Any:
    """The type Typer parses a knob as (None means the flag was not given)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        literals = [a for a in members if typing.get_origin(a) is Literal]
        if bool in members and literals:  # bool | Literal["auto"]: accept true/false/auto
            return str
        if len(members) == 1:
            inner = members[0]
            return str if inner is SecretStr else inner
        return str
    return annotation


def spec_parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    """A keyword-only Typer option for one knob: `--dpo-beta`, bools as `--lora/--no-lora`."""
    flag = "--" + name.replace("_", "-")
    cli_type = _cli_type(field.annotation)
    default = field.get_default(call_default_factory=True)
    shown = "set" if isinstance(default, SecretStr) else default
    help_text = f"{field.description or ''} (default: {shown})".strip()
    decl = f"{flag}/--no-{flag[2:]}" if cli_type is bool else flag
    group = (
        (field.json_schema_extra or {}).get("group", "advanced")
        if isinstance(field.json_schema_extra, dict)
        else None
    )
    option = typer.Option(
        None,
        decl,
        help=help_text,
        show_default=False,
        rich_help_panel=f"Hyperparameters: {group}" if group else None,
    )
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=cli_type | None)


def parse_knob(name: str, value: Any) -> Any:
    """`bool | Literal["auto"]` knobs arrive as text: true/false become booleans, auto stays."""
    annotation = TrainingSpec.model_fields[name].annotation
    if isinstance(value, str) and bool in typing.get_args(annotation) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    return value
