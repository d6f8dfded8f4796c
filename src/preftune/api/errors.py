"""Every error answer in one envelope: `{"error": {"message", "type", "param", "code"}}`.

`PreftuneError` keeps its status; FastAPI's request validation becomes a 400 that names the
parameter; a full disk anywhere below a route (ENOSPC, EDQUOT, SQLite's "database or disk is
full") is a 507 `insufficient_storage`; anything else unexpected is a 500 with a generic message
(the details go to the log).
Client errors carry `x-should-retry: false`, because the `openai` client otherwise retries
409s and would repeat a request that can never succeed.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from preftune.contracts.spec import TrainingSpec
from preftune.errors import PreftuneError, is_disk_full

log = logging.getLogger("preftune.api")

_LOCATIONS = {"body", "query", "path", "header", "cookie", "form", "file"}
DISK_FULL_MESSAGE = (
    "the server's disk is full: nothing of this request was kept; retry once space is freed on the server"
)


def error_response(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    headers = {"x-should-retry": "false"} if 400 <= status < 500 and status not in (408, 429) else None
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": param, "code": code}},
        headers=headers,
    )


def describe_validation_error(errors: list[Any]) -> tuple[str, str | None]:
    """A sentence and the parameter for the first of pydantic's errors."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    where = loc[0] if loc else ""
    parts = loc[1:] if where in _LOCATIONS else loc
    # pydantic puts the failing union member's type in the location; people want the field.
    parts = [
        p for p in parts if not p.startswith(("function-", "literal[")) and p not in {"int", "float", "str"}
    ]
    param = ".".join(parts) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden" and param:
        known = ", ".join(sorted(TrainingSpec.model_fields)) if where == "body" else ""
        return f"unknown parameter '{param}'." + (f" Known knobs: {known}" if known else ""), param
    if first.get("type") == "missing" and param:
        return f"missing required {where or 'body'} parameter '{param}'", param
    if param:
        got = first.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        return f"invalid {param}: {msg}{shown}", param
    # A cross-field rule: its message starts with the parameter at fault.
    named = msg.split(" ", 1)[0]
    if where == "body" and len(loc) == 1 and isinstance(first.get("input"), bytes | str):
        return "the request body is not valid JSON: " + msg, None
    return msg, named if named in TrainingSpec.model_fields else None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PreftuneError)
    async def _preftune_error(request: Request, exc: PreftuneError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return error_response(
            exc.status_code, exc.message, type_=exc.error_type, param=exc.param, code=exc.code
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(list(exc.errors()))
        return error_response(
            400, message, type_="invalid_request_error", param=param, code="invalid_parameter"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and is_disk_full(exc):
            # FastAPI reports any failure to read a body as a 400, a full temporary disk (where the
            # multipart parser spools an upload) included: that one is the server's, not the client's.
            log.error("%s %s failed: the disk is full: %s", request.method, request.url.path, exc.__cause__)
            return error_response(507, DISK_FULL_MESSAGE, type_="server_error", code="insufficient_storage")
        type_ = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}.get(
            exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error"
        )
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        return error_response(exc.status_code, message, type_=type_)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        # A full disk below a route (a temporary file, an archive being built) is not a bug. Answered
        # here, not by the catch-all below, whose middleware re-raises and drops the connection.
        if not is_disk_full(exc):
            raise exc
        log.error("%s %s failed: the disk is full: %s", request.method, request.url.path, exc)
        return error_response(507, DISK_FULL_MESSAGE, type_="server_error", code="insufficient_storage")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):
            log.error("%s %s failed: the disk is full: %s", request.method, request.url.path, exc)
            return error_response(507, DISK_FULL_MESSAGE, type_="server_error", code="insufficient_storage")
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(
            500, f"internal error ({type(exc).__name__}); the server log has details", type_="server_error"
        )


def document_storage(schema: dict[str, Any], error_ref: dict[str, Any]) -> None:
    """507 on every operation that writes (uploads, creates, cancels, deletes: the blobs' or the SQLite
    database's disk can be full), and on downloads, which build their archive on the job's disk once.
    Other reads write nothing and never answer 507."""
    for path, path_item in schema.get("paths", {}).items():
        for method, operation in path_item.items():
            if method in ("post", "put", "patch", "delete") or path.endswith("/download"):
                operation.setdefault("responses", {}).setdefault(
                    "507", {"description": "The server's disk is full; nothing was kept", **error_ref}
                )
