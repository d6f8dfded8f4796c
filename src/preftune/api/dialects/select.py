"""Which dialect a request speaks, where two dialects share a path.

Together's SDK calls `/v1/files` and `/v1/fine-tunes` exactly where preftune's own client does,
with different bodies and answers. A dialect that shares paths declares its routes with
`route_class=DialectRoute.for_dialect(name, id_prefix)`; such a route matches a request only
when the request speaks its dialect, and otherwise the native route (registered after it)
answers. A request speaks a dialect when, in this order:

1. its `X-Preftune-Dialect` header names it (`native` forces the native routes);
2. its `job_id` path parameter carries the dialect's own id prefix (Together's `ft-...`);
3. its `User-Agent` is the dialect's official client (`Together/Python 3.1.1`, `Fireworks/Python 1.2.30`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

DIALECT_HEADER = "x-preftune-dialect"

# The User-Agent prefixes of each dialect's official clients.
USER_AGENTS: dict[str, tuple[str, ...]] = {
    "together": ("Together/", "AsyncTogether/"),
    "fireworks": ("Fireworks/", "AsyncFireworks/"),
}


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode("latin-1")
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return str(value.decode("latin-1"))
    return None


def speaks(scope: Scope, dialect: str, path_params: dict[str, Any], id_prefix: str | None = None) -> bool:
    chosen = _header(scope, DIALECT_HEADER)
    if chosen:
        return chosen.strip().lower() == dialect
    # Only a job id says which dialect minted it (a file name may start with anything).
    job_id = path_params.get("job_id")
    if id_prefix and isinstance(job_id, str) and job_id.startswith(id_prefix):
        return True
    agent = _header(scope, "user-agent") or ""
    return agent.startswith(USER_AGENTS.get(dialect, ()))


class DialectRoute(APIRoute):
    """An `APIRoute` that matches only requests of its dialect (see the module's docstring)."""

    dialect: ClassVar[str] = ""
    id_prefix: ClassVar[str | None] = None

    @classmethod
    def for_dialect(cls, dialect: str, id_prefix: str | None = None) -> type[DialectRoute]:
        return type(f"{dialect.title()}Route", (cls,), {"dialect": dialect, "id_prefix": id_prefix})

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.NONE:
            return match, child
        if not speaks(scope, self.dialect, dict(child.get("path_params", {})), self.id_prefix):
            return Match.NONE, {}
        return match, child
