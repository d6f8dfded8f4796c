"""`create_app(settings)`: the FastAPI application with every router, the error envelope and
an accurate OpenAPI document.

The lifespan opens (and migrates) the database and the blob store, and calls the inference
router's `startup(app)` / `shutdown(app)` when that router is installed. Routers that are
not present in this build (inference, console) are skipped.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from preftune import __version__
from preftune.api.dialects import DIALECT_ROUTERS, OPTIONAL_DIALECT_ROUTERS
from preftune.api.errors import ErrorResponse, document_storage, install_error_handlers
from preftune.api.limits import document_limits, install_limits
from preftune.config import Settings
from preftune.service.bootstrap import open_blobs
from preftune.store.db import open_database

log = logging.getLogger("preftune.api")

# Not present in every build: the inference routes (they need the engine) and the console.
OPTIONAL_ROUTERS = [*OPTIONAL_DIALECT_ROUTERS, ("preftune.api.routes.console", "")]


def _optional(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    modules = [(importlib.import_module(name), prefix) for name, prefix in DIALECT_ROUTERS]
    modules += [(m, prefix) for name, prefix in OPTIONAL_ROUTERS if (m := _optional(name)) is not None]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)
        app.state.db = open_database(settings)
        app.state.blobs = open_blobs(settings, app.state.db)
        if swept := app.state.blobs.sweep_staged(settings.stale_upload_seconds):
            log.info("removed %d staged upload(s) left by a process that died mid-upload", swept)
        started = []
        try:
            for module, _ in modules:
                if hasattr(module, "startup"):
                    await module.startup(app)
                    started.append(module)
            yield
        finally:
            for module in reversed(started):
                if hasattr(module, "shutdown"):
                    try:
                        await module.shutdown(app)
                    except Exception:
                        log.exception("shutdown of %s failed", module.__name__)
            app.state.db.dispose()

    app = FastAPI(
        title="preftune",
        version=__version__,
        description="Self-hosted preference fine-tuning (DPO, SimPO, RPO, SFT). Native routes under /v1 "
        "(files, fine-tunes, keys) and OpenAI-compatible routes (/v1/files, /v1/fine_tuning/jobs). "
        "Authenticate with `Authorization: Bearer KEY`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    install_limits(app, settings)
    for module, prefix in modules:
        # A dialect module offers `router`, or `routers` (in order; `(router, prefix)` for another prefix).
        for entry in getattr(module, "routers", None) or [module.router]:
            router, where = entry if isinstance(entry, tuple) else (entry, prefix)
            app.include_router(router, prefix=where)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, corrected: bad input is a 400 in the error envelope (never a 422)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in list(components["ErrorResponse"].pop("$defs", {}).items()):
        components.setdefault(name, sub)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path, path_item in schema.get("paths", {}).items():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            had_validation = responses.pop("422", None) is not None
            if had_validation or operation.get("requestBody"):
                responses.setdefault(
                    "400", {"description": "Invalid request: `param` names the field", **error_ref}
                )
            if operation.get("security"):
                responses.setdefault("401", {"description": "Missing or invalid API key", **error_ref})
            # A path id, a cursor (`after`) or a body naming a file, job or model can each be unknown.
            names = {p.get("name") for p in operation.get("parameters", [])}
            if "{" in path or "after" in names or operation.get("requestBody"):
                responses.setdefault("404", {"description": "Not found (or another owner's)", **error_ref})
            for code, response in responses.items():
                if code[0] in "45" and "content" not in response:
                    response.update(error_ref)
    document_limits(schema, error_ref)
    document_storage(schema, error_ref)
    app.openapi_schema = schema
    return schema
