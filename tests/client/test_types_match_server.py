"""The SDK's result types (`preftune.client.types`, written by hand) against the server's own schema.

`/openapi.json` is generated from `preftune.api.schemas`; every SDK type that mirrors one of its
objects must have the same fields, the same nullability (an SDK field that refuses `null` would
crash on a server that sends it) and accept every value of a server enum (a status added on the
server must be added to the SDK's `Literal`). A field added on the server and forgotten in the SDK
fails here, as does a server object the SDK reads but has no type for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from preftune.api.app import create_app
from preftune.client import types
from preftune.client.deployments import Deployment
from preftune.config import Settings

# SDK type -> the server's schema component it mirrors.
MIRRORS: dict[type[BaseModel], str] = {
    types.FileObject: "FileObject",
    types.DeletedObject: "DeletedObject",
    types.FineTuneJob: "FineTuneJob",
    types.JobProgress: "JobProgress",
    types.JobError: "JobError",
    types.JobEvent: "JobEvent",
    types.Checkpoint: "Checkpoint",
    types.APIKey: "APIKey",
    types.APIKeyCreated: "APIKeyCreated",
    types.Evaluation: "EvaluationObject",
    types.EvaluationError: "EvaluationError",
    Deployment: "DeploymentObject",
}
# SDK types with no server component to compare against, and why.
NO_SERVER_SCHEMA = {
    types.MetricPoint: "the server sends metric lines as free-form objects (MetricList.data: list[dict])",
}
# Server response components the SDK does not model as a type of its own.
NOT_MIRRORED = {
    "MetricList": "the SDK returns its `data` as a list of MetricPoint",
    "ErrorResponse": "errors become preftune.errors exceptions",
}
# Other clients, not this SDK, read the other dialects' routes (`openai`, `together`, `fireworks-ai`).
OTHER_CLIENTS_TAGS = {"openai-compatible", "together", "fireworks"}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home: Path = tmp_path_factory.mktemp("home")
    schema: dict[str, Any] = create_app(Settings(home=home)).openapi()
    return schema


def _nullable(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "null" or any(_nullable(branch) for branch in prop.get("anyOf", []))


def _values(prop: dict[str, Any]) -> set[Any] | None:
    """The values a property may take when it is an enum (Literal), None when it is open."""
    if "const" in prop:
        return {prop["const"]}
    if "enum" in prop:
        return set(prop["enum"])
    branches = [b for b in prop.get("anyOf", []) if b.get("type") != "null"]
    if not branches:
        return None
    found: set[Any] = set()
    for branch in branches:
        values = _values(branch)
        if values is None:
            return None
        found |= values
    return found


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    # A Literal alias shared by several models may be a $ref (JobStatus); read through it.
    ref = prop.get("$ref")
    return defs.get(ref.rsplit("/", 1)[-1], prop) if ref else prop


def drift(sdk: type[BaseModel], server: dict[str, Any], server_defs: dict[str, Any]) -> list[str]:
    """Every way `sdk` differs from the server's schema of the same object."""
    sdk_schema = sdk.model_json_schema()
    sdk_props: dict[str, Any] = sdk_schema.get("properties", {})
    sdk_defs: dict[str, Any] = sdk_schema.get("$defs", {})
    server_props: dict[str, Any] = server.get("properties", {})
    problems = [
        f"{name}: on the server, missing in the SDK" for name in sorted(set(server_props) - set(sdk_props))
    ]
    problems += [
        f"{name}: in the SDK, not on the server" for name in sorted(set(sdk_props) - set(server_props))
    ]
    for name in sorted(set(server_props) & set(sdk_props)):
        ours, theirs = _resolve(sdk_props[name], sdk_defs), _resolve(server_props[name], server_defs)
        if _nullable(ours) != _nullable(theirs):
            problems.append(f"{name}: nullable on the {'SDK' if _nullable(ours) else 'server'} only")
        our_values, their_values = _values(ours), _values(theirs)
        if our_values is not None and (their_values is None or not their_values <= our_values):
            problems.append(
                f"{name}: the SDK accepts only {sorted(our_values)}, the server sends {their_values or 'any'}"
            )
    return problems


@pytest.mark.parametrize("sdk", list(MIRRORS), ids=lambda t: t.__name__)
def test_sdk_type_has_the_servers_fields(sdk: type[BaseModel], openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    problems = drift(sdk, components[MIRRORS[sdk]], components)
    assert problems == [], f"{sdk.__name__} drifted from the server's {MIRRORS[sdk]}:\n" + "\n".join(problems)


def test_every_sdk_type_is_compared_or_says_why_not() -> None:
    exported = {getattr(types, name) for name in types.__all__} | {Deployment}
    models = {t for t in exported if isinstance(t, type) and issubclass(t, BaseModel)}
    unchecked = models - set(MIRRORS) - set(NO_SERVER_SCHEMA)
    assert not unchecked, f"add these SDK types to MIRRORS: {sorted(t.__name__ for t in unchecked)}"


def test_every_object_the_sdk_reads_has_an_sdk_type(openapi: dict[str, Any]) -> None:
    answered: set[str] = set()
    for operations in openapi["paths"].values():
        for operation in operations.values():
            if OTHER_CLIENTS_TAGS & set(operation.get("tags", [])):
                continue
            content = operation.get("responses", {}).get("200", {}).get("content", {})
            ref = content.get("application/json", {}).get("schema", {}).get("$ref")
            if ref:
                name = ref.rsplit("/", 1)[-1]
                # ListResponse_FileObject_ carries FileObjects: the SDK's Page of FileObject.
                answered.add(name.removeprefix("ListResponse_").removesuffix("_"))
    mirrored = set(MIRRORS.values())
    assert answered - mirrored - set(NOT_MIRRORED) == set()


def test_the_comparison_catches_a_forgotten_field_a_wider_enum_and_nullability(
    openapi: dict[str, Any],
) -> None:
    components = openapi["components"]["schemas"]
    server = dict(components["JobEvent"])
    server["properties"] = dict(server["properties"])
    server["properties"]["trace_id"] = {"type": "string"}
    server["properties"]["level"] = {"enum": ["info", "warn", "error", "debug"], "type": "string"}
    server["properties"]["message"] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    found = "\n".join(drift(types.JobEvent, server, components))
    assert "trace_id: on the server, missing in the SDK" in found
    assert "level: the SDK accepts only" in found and "debug" in found
    assert "message: nullable on the server only" in found
