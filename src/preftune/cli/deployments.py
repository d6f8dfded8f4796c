"""`preftune deployments create|list|retrieve|delete`: keep models loaded for chat on a server."""

from __future__ import annotations

from typing import Any

import typer

from preftune.cli.common import (
    JSON_OPTION,
    console,
    fmt_time,
    handle_errors,
    make_client,
    print_json,
    print_table,
)

app = typer.Typer(no_args_is_help=True)


def _resource(client: Any) -> Any:
    # The SDK's Client attaches `deployments`; build it from the transport if this build's Client does not.
    from preftune.client.deployments import Deployments

    return getattr(client, "deployments", None) or Deployments(client._transport)


@app.command("create")
@handle_errors
def create(
    model: str = typer.Argument(..., help="A base model or one of your fine-tuned models (ft:…)."),
    min_replicas: int = typer.Option(
        1,
        "--min-replicas",
        min=0,
        max=1,
        help="1 keeps the model loaded; 0 loads it on first request. One replica per server process.",
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Return once the model is loaded and ready."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for ready."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Deploy a model: it stays loaded, so chat answers without a cold start."""
    with make_client() as client:
        deployments = _resource(client)
        deployment = deployments.create(model, min_replicas=min_replicas)
        if wait and deployment.status != "ready":
            with console.status(f"loading {model} …"):
                deployment = deployments.wait(deployment.id, timeout=timeout)
    if as_json:
        print_json(deployment)
        return
    console.print(f"{deployment.id}: {deployment.model} is {deployment.status}")


@app.command("list")
@handle_errors
def list_command(as_json: bool = JSON_OPTION) -> None:
    """Your deployments, newest first."""
    with make_client() as client:
        items = _resource(client).list()
    if as_json:
        print_json(items)
        return
    print_table(
        "deployments",
        ["id", "model", "status", "min_replicas", "created"],
        [
            [
                d.id,
                d.model,
                d.status + (f" ({d.error})" if d.error else ""),
                d.min_replicas,
                fmt_time(d.created_at),
            ]
            for d in items
        ],
    )


@app.command("retrieve")
@handle_errors
def retrieve(
    deployment_id: str = typer.Argument(..., help="deploy-… id"), as_json: bool = JSON_OPTION
) -> None:
    """One deployment's status (and why it failed, if it did)."""
    with make_client() as client:
        deployment = _resource(client).retrieve(deployment_id)
    if as_json:
        print_json(deployment)
        return
    console.print(
        f"{deployment.id}: {deployment.model} is {deployment.status}"
        + (f": {deployment.error}" if deployment.error else "")
    )


@app.command("delete")
@handle_errors
def delete(deployment_id: str = typer.Argument(..., help="deploy-… id"), as_json: bool = JSON_OPTION) -> None:
    """Stop holding the model: it is then loaded on demand like any other, and unloaded when idle and room is needed."""
    with make_client() as client:
        deployment = _resource(client).delete(deployment_id)
    if as_json:
        print_json(deployment)
        return
    console.print(f"deleted {deployment.id} ({deployment.model})")
