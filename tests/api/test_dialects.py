"""The dialect layer's own rules: every dialect names every job state, and the routes declare the
caller and the session through the shared `Annotated` aliases rather than their own `Depends`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import preftune.api.dialects
from preftune.api.dialects import states
from preftune.service.states import JobStatus

DIALECTS_DIR = Path(preftune.api.dialects.__file__).resolve().parent


@pytest.mark.parametrize("dialect", sorted(states.ALL))
def test_every_dialect_names_every_state(dialect: str) -> None:
    assert set(states.ALL[dialect]) == set(JobStatus)


def test_terminal_states_stay_distinguishable_in_every_dialect() -> None:
    # A client waits for completed vs failed vs cancelled: those must never share a word.
    for dialect, words in states.ALL.items():
        finals = {words[JobStatus.COMPLETED], words[JobStatus.ERROR], words[JobStatus.CANCELLED]}
        assert len(finals) == 3, dialect


def test_routes_take_the_caller_and_session_from_the_shared_aliases() -> None:
    found = []
    for path in sorted(DIALECTS_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Depends":
                names = {getattr(a, "id", None) for a in node.args}
                if names & {"get_owner", "get_db", "get_settings", "get_blobs", "get_database"}:
                    found.append(f"{path.relative_to(DIALECTS_DIR)}:{node.lineno}")
    assert found == [], "use api.deps.CallerDep / SessionDep / ... instead: " + ", ".join(found)
