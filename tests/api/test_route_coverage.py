"""Every route the app serves is accounted for by the isolation checks: walked by
tests/api/test_tenant_isolation.py (it needs a key; a create also says what it is sent in
`helpers.routes.CREATES`), or listed in `helpers.routes.PUBLIC` with the reason it answers anyone.
Generated from `app.routes`, so a new route, in any dialect or outside /v1, fails here until placed."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends

from helpers.routes import PUBLIC, app_routes, tenant_routes, uncovered
from preftune.api.app import create_app
from preftune.api.deps import get_owner
from preftune.config import Settings


def test_every_route_is_checked_for_isolation_or_public_with_a_reason(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path / "home"))
    assert uncovered(app) == []
    routes = app_routes(app)
    walked = tenant_routes(app)
    assert {r.key for r in routes} == {r.key for r in walked} | set(PUBLIC)
    assert all(reason.strip() for reason in PUBLIC.values())
    counts = {kind: sum(r.kind == kind for r in walked) for kind in ("id", "list", "create")}
    # The numbers docs/reliability.md quotes; a new route raises them.
    print(
        f"routes: {len(routes)} served, {len(walked)} walked by the tenant test {counts}, {len(PUBLIC)} public"
    )
    assert counts["id"] >= 18 and counts["list"] >= 6 and counts["create"] >= 6


def test_a_new_route_is_caught_until_it_is_placed(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path / "home"))
    extra = APIRouter()

    @extra.get("/v2/status")
    def status() -> dict[str, str]:  # no key, not listed
        return {}

    @extra.post("/v1/widgets")
    def make_widget(owner: object = Depends(get_owner)) -> dict[str, str]:  # a create nobody checks
        return {}

    @extra.get("/v1/widgets/{widget_id}")
    def widget(widget_id: str, owner: object = Depends(get_owner)) -> dict[str, str]:  # walked: fine
        return {}

    app.include_router(extra)
    problems = sorted(uncovered(app))
    assert len(problems) == 2, problems
    assert problems[0].startswith("GET /v2/status answers without an API key"), problems
    assert problems[1].startswith("POST /v1/widgets writes without an id"), problems
