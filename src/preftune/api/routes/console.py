"""Serve the web console (`preftune/web/`) at `/`.

The console is static files only: it talks to the public `/v1` API with the user's key,
so nothing here needs auth. Paths that are not a file fall back to `index.html` so a
reloaded or bookmarked console URL still opens the console; `/v1/...` is never answered
here, so unknown API paths keep their JSON 404.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

# Files change with each release of preftune; the browser must revalidate so an upgrade
# never leaves an old page running against a new API.
_NO_STALE = {"Cache-Control": "no-cache"}
_HEADERS = {
    **_NO_STALE,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The console loads scripts only from itself; connect-src 'self' keeps the API key on this origin.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


def _resolve(path: str, web_dir: Path) -> Path | None:
    """The file under `web_dir` that `path` names, or None (also for `..` escapes)."""
    candidate = (web_dir / path).resolve()
    if candidate.is_file() and candidate.is_relative_to(web_dir):
        return candidate
    return None


def _index(web_dir: Path) -> Response:
    return FileResponse(
        web_dir / "index.html",
        media_type="text/html; charset=utf-8",
        headers={**_HEADERS, "Content-Security-Policy": _CSP},
    )


@router.get("/", response_model=None)
def console_index() -> Response:
    return _index(WEB_DIR)


@router.get("/{path:path}", response_model=None)
def console_file(path: str) -> Response:
    if path == "v1" or path.startswith("v1/"):
        return JSONResponse(
            status_code=404,
            content={
                "error": {
                    "message": f"no API route GET /{path}; see /docs for the routes",
                    "type": "not_found_error",
                    "param": None,
                    "code": "route_not_found",
                }
            },
        )
    found = _resolve(path, WEB_DIR)
    if found is not None:
        media_type = "text/javascript; charset=utf-8" if found.suffix in {".js", ".mjs"} else None
        return FileResponse(found, media_type=media_type, headers=_HEADERS)
    # A path with a file extension that does not exist is a real 404 (a missing asset),
    # not a console page: answering index.html would hide the mistake.
    if "." in path.rsplit("/", 1)[-1]:
        return Response(status_code=404, content=f"no console file {path}\n", media_type="text/plain")
    return _index(WEB_DIR)


def mount(app: FastAPI) -> None:
    """Add the console to `app`; call after every API router so `/{path}` is matched last."""
    app.include_router(router)
