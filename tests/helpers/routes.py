"""The app's route table, as the tenant-isolation test walks it, and how each route is covered.

Every route `app.routes` serves must be accounted for (tests/api/test_route_coverage.py):
- a route that needs an API key (it depends on `api.deps.get_owner`) is walked by
  tests/api/test_tenant_isolation.py: every such route answers 401 to no/unknown/revoked keys; one with
  an id in its path answers another owner 404 with none of the data; a GET list shows none of it; and
  a create (a write without an id) must be in `CREATES`, which says what the tenant test sends it;
- a route without a key must be in `PUBLIC`, with the reason it may answer anyone.
So a route added later, in any dialect or outside `/v1`, fails the coverage test until it is placed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi.routing import APIRoute

from preftune.api.deps import get_owner

PARAM_RE = re.compile(r"\{(\w+)(?::\w+)?\}")

# Routes that answer without an API key, and why that is safe.
PUBLIC: dict[tuple[str, str], str] = {
    (
        "GET",
        "/v1/fine-tunes/spec",
    ): "the hyperparameters' JSON schema, the same for everyone (the console's form)",
    ("GET", "/openapi.json"): "the API's description, the same for everyone",
    ("GET", "/docs"): "Swagger UI over /openapi.json; it calls the API with the key the user types",
    ("GET", "/docs/oauth2-redirect"): "Swagger UI's static OAuth helper page",
    ("GET", "/redoc"): "ReDoc over /openapi.json",
    ("GET", "/"): "the console's page; all its data comes from /v1 routes with the user's key",
    ("GET", "/{path:path}"): "the console's static files (JS, CSS), the same for everyone",
}

# Owner routes without an id in the path that write (creates): what the tenant test sends each one.
CREATES: dict[tuple[str, str], str] = {
    ("POST", "/v1/files"): "an upload with another owner's Idempotency-Key makes the caller's own file",
    ("POST", "/v1/fine-tunes"): "another owner's training_file (by id and by dataset name) is a 404; "
    "another owner's Idempotency-Key makes the caller's own job",
    ("POST", "/v1/fine_tuning/jobs"): "another owner's training_file is a 404",
    ("POST", "/v1/chat/completions"): "another owner's fine-tuned model is a 404",
    ("POST", "/v1/deployments"): "another owner's fine-tuned model is a 404",
    ("POST", "/v1/keys"): "a key for the caller's own owner; new_owner without an admin key is a 403",
}


@dataclass(frozen=True)
class AppRoute:
    """One method of one route, with its full path."""

    method: str
    path: str
    params: tuple[str, ...]
    owner: bool  # needs an API key: depends on api.deps.get_owner

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path

    @property
    def kind(self) -> str:
        """id (an id in the path), list (a GET without one), create (any other method without one)."""
        if self.params:
            return "id"
        return "list" if self.method == "GET" else "create"


def _flat(app: Any) -> Iterator[tuple[str, Any]]:
    # FastAPI >= 0.16x keeps included routers unflattened in app.routes; its iterator gives full paths.
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    if iterate is None:
        for route in app.routes:
            yield getattr(route, "path", ""), route
        return
    for context in iterate(app.routes):
        yield context.path or "", context.original_route


def _calls(dependant: Any) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def app_routes(app: Any) -> list[AppRoute]:
    """Every (method, path) the app serves (HEAD and OPTIONS aside), API route or not."""
    out = []
    for path, route in _flat(app):
        methods = getattr(route, "methods", None) or {"*"}  # a mount answers every method
        owner = isinstance(route, APIRoute) and any(call is get_owner for call in _calls(route.dependant))
        params = tuple(PARAM_RE.findall(path))
        for method in sorted(set(methods) - {"HEAD", "OPTIONS"}):
            out.append(AppRoute(method, path, params, owner))
    return out


def tenant_routes(app: Any) -> list[AppRoute]:
    """The routes the tenant test walks with other owners' and bad keys: all that need a key."""
    return [r for r in app_routes(app) if r.owner]


def uncovered(app: Any) -> list[str]:
    """Routes no isolation check accounts for, each with what to do about it."""
    problems = []
    for route in app_routes(app):
        if route.owner:
            if route.key in PUBLIC:
                problems.append(f"{route.method} {route.path} needs a key but is listed in PUBLIC")
            elif route.kind == "create" and route.key not in CREATES:
                problems.append(
                    f"{route.method} {route.path} writes without an id: add it to helpers.routes.CREATES and "
                    "send it another owner's resources in tests/api/test_tenant_isolation.py"
                )
        elif route.key not in PUBLIC:
            problems.append(
                f"{route.method} {route.path} answers without an API key: depend on api.deps.get_owner, or "
                "list it in helpers.routes.PUBLIC with the reason it may answer anyone"
            )
    served = {r.key for r in app_routes(app)}
    problems += [
        f"{m} {p} is listed but not served any more" for m, p in (PUBLIC.keys() | CREATES.keys()) - served
    ]
    return problems
