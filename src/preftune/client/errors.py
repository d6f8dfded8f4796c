"""Typed exceptions raised by the SDK, carrying the server's message, `param` and `code`.

They reuse `preftune.errors` (so `except preftune.errors.NotFoundError` works the same on
both sides of the wire) and add the HTTP details plus the two failures only a client sees:
an unreachable server and a rate limit.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from preftune import errors

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "RateLimitError",
    "ServerError",
    "error_from_response",
]


class APIConnectionError(errors.PreftuneError):
    """The server could not be reached (not started, wrong `PREFTUNE_BASE_URL`, network down)."""

    error_type = "connection_error"


class APIStatusError(errors.PreftuneError):
    """A status code the SDK has no more specific class for."""


class RateLimitError(errors.PreftuneError):
    status_code = 429
    error_type = "rate_limit_error"


class ServerError(errors.PreftuneError):
    status_code = 500
    error_type = "server_error"


_BY_STATUS: dict[int, type[errors.PreftuneError]] = {
    400: errors.InvalidRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    413: errors.PayloadTooLargeError,
    422: errors.InvalidRequestError,
    429: RateLimitError,
    507: errors.InsufficientStorageError,
}


def error_from_response(response: httpx.Response) -> errors.PreftuneError:
    """The exception for an error response, with the server's envelope fields when present."""
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        message = str(detail.get("message") or response.reason_phrase)
        param, code = detail.get("param"), detail.get("code")
    else:
        text = response.text.strip()[:500]
        message = f"HTTP {response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")
        param = code = None
    status = response.status_code
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIStatusError)
    exc = cls(message, param=param, code=code)
    # The instance carries the real status (a 422 is an InvalidRequestError whose class says 400).
    exc.status_code = status
    exc.response = response  # type: ignore[attr-defined]
    return exc
