"""The SDK raises the same `preftune.errors` class the server raised, from the status and envelope."""

from __future__ import annotations

import httpx

from preftune import errors
from preftune.client.errors import ServerError, error_from_response


def _response(status: int, code: str | None) -> httpx.Response:
    body = {
        "error": {
            "message": "the server's disk is full",
            "type": "server_error",
            "param": "file",
            "code": code,
        }
    }
    return httpx.Response(status, json=body, request=httpx.Request("POST", "http://x/v1/files"))


def test_a_full_disk_is_insufficient_storage_on_both_sides() -> None:
    exc = error_from_response(_response(507, "insufficient_storage"))
    assert isinstance(exc, errors.InsufficientStorageError)
    assert (exc.status_code, exc.code, exc.param) == (507, "insufficient_storage", "file")
    assert type(error_from_response(_response(502, None))) is ServerError
