"""Request limits, as one ASGI middleware in front of every route (of every dialect):

- a body limit for everything but uploads (`Settings.max_request_bytes`): a larger JSON body is a
  413 before any route parses it (uploads have their own, `max_upload_bytes`, enforced while streaming);
- a request rate per API key (`rate_limit_per_second`, bursts up to `rate_limit_burst`): a token bucket;
  past it, a 429 with `Retry-After` (seconds until a token is back);
- concurrent uploads per API key (`max_concurrent_uploads`): one more is a 429 with `Retry-After`.

Keys are told apart by a hash of the presented token (before authentication, so an unknown key
spends its own bucket, not someone else's); a request without a key is keyed by its client address.
State is per server process: a deployment with several API processes multiplies the limits by them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from preftune.config import Settings
from preftune.store.db import PoolTimeout

log = logging.getLogger("preftune.api")

# Buckets of keys not seen for a while are forgotten; this many are kept at most.
MAX_TRACKED_KEYS = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets per key: `rate` tokens a second, holding at most `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """Spend a token of `key`: 0.0 if allowed, else the seconds until one is available."""
        stamp = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), stamp)
            bucket.tokens = min(self.burst, bucket.tokens + (stamp - bucket.stamp) * self.rate)
            bucket.stamp = stamp
            self._buckets[key] = bucket
            while len(self._buckets) > MAX_TRACKED_KEYS:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


class ConcurrencyLimiter:
    """At most `limit` operations in flight per key."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        with self._lock:
            if self._active.get(key, 0) >= self.limit:
                return False
            self._active[key] = self._active.get(key, 0) + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            left = self._active.get(key, 1) - 1
            if left <= 0:
                self._active.pop(key, None)
            else:
                self._active[key] = left


def _client_key(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return "key:" + hashlib.sha256(value).hexdigest()
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


def is_upload(scope: Scope) -> bool:
    """An upload route of any dialect: a POST to a path ending in /files (native, OpenAI, Together's
    handshake) or in `:upload` (Fireworks' datasets), or a PUT of a presigned upload URL
    (`/v1/files/uploads/{grant}`)."""
    path = str(scope.get("path", "")).rstrip("/")
    method = scope.get("method")
    if method == "POST":
        return path.endswith(("/files", ":upload"))
    return method == "PUT" and "/files/uploads/" in path


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _refuse(
    send: Send, status: int, message: str, *, param: str | None, code: str, retry_after: float | None = None
) -> None:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "rate_limit_error" if status == 429 else "invalid_request_error",
                "param": param,
                "code": code,
            }
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
    else:
        headers.append((b"x-should-retry", b"false"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.rate = (
            RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
            if settings.rate_limit_per_second > 0
            else None
        )
        self.uploads = ConcurrencyLimiter(settings.max_concurrent_uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1"):
            await self.app(scope, receive, send)
            return
        key = _client_key(scope)
        if self.rate is not None and (wait := self.rate.take(key)) > 0:
            await _refuse(
                send,
                429,
                f"too many requests for this API key: at most {self.settings.rate_limit_per_second:g}/s "
                f"(bursts of {self.settings.rate_limit_burst}); retry after the Retry-After seconds",
                param=None,
                code="rate_limited",
                retry_after=wait,
            )
            return
        if is_upload(scope):
            await self._upload(scope, receive, send, key)
            return
        await self._bounded_body(scope, receive, send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send, key: str) -> None:
        if not self.uploads.acquire(key):
            await _refuse(
                send,
                429,
                f"this API key already has {self.settings.max_concurrent_uploads} uploads in progress; "
                "wait for one to finish",
                param="file",
                code="too_many_uploads",
                retry_after=1,
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.uploads.release(key)

    async def _bounded_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read a (small) body whole, refusing it past the limit, then hand it to the app."""
        limit = self.settings.max_request_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(send, limit)
            return
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS") and declared is None:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await self._too_large(send, limit)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, limit: int) -> None:
        await _refuse(
            send,
            413,
            f"the request body is larger than the server's limit of {limit} bytes "
            "(PREFTUNE_MAX_REQUEST_BYTES); files go through POST /v1/files",
            param="body",
            code="request_too_large",
        )


def install_limits(app: Any, settings: Settings) -> None:
    app.add_middleware(LimitsMiddleware, settings=settings)
    app.add_exception_handler(PoolTimeout, _busy)


async def _busy(request: Request, exc: Exception) -> Response:
    # Every database connection stayed busy for the pool's whole timeout: the server is overloaded, not
    # broken. A 503 with Retry-After tells clients (the SDK, `openai`) to come back, instead of a 500.
    log.warning("%s %s: no database connection within the pool timeout", request.method, request.url.path)
    return JSONResponse(
        status_code=503,
        content={
            "error": {
                "message": "the server is overloaded (no database connection came free); retry shortly",
                "type": "server_error",
                "param": None,
                "code": "overloaded",
            }
        },
        headers={"Retry-After": "2"},
    )


def document_limits(schema: dict[str, Any], error_ref: dict[str, Any]) -> None:
    """Add the limits' answers to the OpenAPI document: 429 on every keyed route, 413 on every body."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not path_item or not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            if operation.get("security"):
                responses.setdefault(
                    "429", {"description": "Rate or concurrent-upload limit; see Retry-After", **error_ref}
                )
            if operation.get("requestBody"):
                responses.setdefault(
                    "413", {"description": "The request body is over the limit", **error_ref}
                )
