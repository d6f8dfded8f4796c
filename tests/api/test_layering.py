"""The api room keeps to its side of `api -> service -> store` (DESIGN.md, "The rooms").

Routes may hold a `Session` to hand to the service, but they neither query the store themselves
nor reach into the service's private helpers: what they need is a named public service function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import preftune.api

API_DIR = Path(preftune.api.__file__).resolve().parent
# A route only passes the request's session on; anything else from SQLAlchemy means a query here.
ALLOWED_SQLALCHEMY = {("sqlalchemy.orm", "Session")}
QUERY_METHODS = {"scalar", "scalars", "execute", "get", "query", "add", "delete", "merge", "commit"}


def violations(source: str, where: str) -> list[str]:
    """Each place in `source` where api code queries the store or uses a private service name."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.startswith("sqlalchemy")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (
                    node.module.startswith("sqlalchemy")
                    and (node.module, alias.name) not in ALLOWED_SQLALCHEMY
                ):
                    found.append(f"{where}: from {node.module} import {alias.name}")
                if node.module.startswith("preftune.service") and alias.name.startswith("_"):
                    found.append(f"{where}: private {node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id.endswith("_service") and node.attr.startswith("_"):
                found.append(f"{where}: private {node.value.id}.{node.attr}")
            if node.value.id == "session" and node.attr in QUERY_METHODS:
                found.append(f"{where}: session.{node.attr} (a query outside the service)")
    return found


def test_the_check_catches_what_the_routes_used_to_do() -> None:
    # What api/retry_dedupe.py and api/store_reads.py held before they moved into service.jobs.
    source = (
        "from sqlalchemy import select\n"
        "from preftune.service.jobs import _request_hash\n"
        "from preftune.service import jobs as job_service\n"
        "def f(session):\n"
        "    job_service._checkpoints(session, 'x')\n"
        "    return session.scalars(select(1))\n"
    )
    found = "\n".join(violations(source, "probe.py"))
    for expected in ("import select", "_request_hash", "job_service._checkpoints", "session.scalars"):
        assert expected in found


def test_api_modules_only_call_public_service_functions() -> None:
    modules = sorted(API_DIR.rglob("*.py"))
    assert {"files.py", "fine_tunes.py", "jobs.py", "presenters.py"} <= {p.name for p in modules}
    problems = [
        v
        for path in modules
        for v in violations(path.read_text(encoding="utf-8"), str(path.relative_to(API_DIR)))
    ]
    assert problems == [], "\n".join(problems)
