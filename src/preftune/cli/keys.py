"""`preftune keys create|list|revoke`: manage API keys on a server."""

from __future__ import annotations

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


@app.command("create")
@handle_errors
def create(
    name: str = typer.Option("default", "--name", help="A label to recognise the key by."),
    new_owner: bool = typer.Option(
        False, "--new-owner", help="Admins: the key belongs to a new owner who sees only their own resources."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a key; its secret is printed this once."""
    with make_client() as client:
        key = client.keys.create(name, new_owner=new_owner)
    if as_json:
        print_json(key)
        return
    console.print(f"created {key.id} ({key.name}) for owner {key.owner_id}")
    console.print("secret (shown once, store it now):")
    print(key.key)


@app.command("list")
@handle_errors
def list_keys(as_json: bool = JSON_OPTION) -> None:
    """Keys of your owner (secrets are never shown again)."""
    with make_client() as client:
        keys = client.keys.list()
    if as_json:
        print_json(keys)
        return
    print_table(
        None,
        ["id", "name", "prefix", "admin", "created", "last used", "revoked"],
        [
            [
                k.id,
                k.name,
                k.prefix,
                k.is_admin,
                fmt_time(k.created_at),
                fmt_time(k.last_used_at),
                fmt_time(k.revoked_at),
            ]
            for k in keys
        ],
    )


@app.command("revoke")
@handle_errors
def revoke(key_id: str = typer.Argument(..., help="key id"), as_json: bool = JSON_OPTION) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    with make_client() as client:
        key = client.keys.revoke(key_id)
    if as_json:
        print_json(key)
    else:
        console.print(f"revoked {key.id}")
