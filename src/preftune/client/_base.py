"""The SDK's HTTP layer: authentication, retries with backoff, error mapping.

Retries cover what a person would retry by hand: connection failures, 429 and 5xx.
Every attempt of one POST carries the same `Idempotency-Key`, so a create retried after
a lost response never makes a second job.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from preftune import __version__
from preftune.client.errors import APIConnectionError, error_from_response

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class HTTPTransport:
    """One httpx client plus the retry loop; resource modules call `request`/`stream`."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        headers = {"User-Agent": f"preftune-python/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._owns_client = http_client is None
        self._client = http_client or httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        self._headers = headers

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def url(self, path: str) -> str:
        return f"{self.base_url}/v1{path}"

    def _backoff(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after")
            if retry_after and retry_after.replace(".", "", 1).isdigit():
                return min(float(retry_after), 30.0)
        # Exponential with jitter, so that many clients do not retry in lockstep.
        return min(0.5 * 2**attempt, 8.0) * (0.75 + random.random() / 2)

    def _prepare_headers(self, method: str, headers: Mapping[str, str] | None) -> dict[str, str]:
        out = {**self._headers, **(headers or {})}
        if method == "POST" and not any(k.lower() == "idempotency-key" for k in out):
            out["Idempotency-Key"] = f"preftune-{uuid.uuid4()}"
        return out

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        files: Any = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> Any:
        """Send one request (retrying when safe) and return the decoded JSON body."""
        method = method.upper()
        send_headers = self._prepare_headers(method, headers)
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}
        attempts = self.max_retries + 1 if retry else 1
        for attempt in range(attempts):
            if files is not None and attempt > 0:
                _rewind(files)
            try:
                response = self._client.request(
                    method,
                    self.url(path),
                    json=json,
                    params=clean_params,
                    files=files,
                    data=data,
                    headers=send_headers,
                )
            except httpx.TransportError as exc:
                if attempt + 1 < attempts:
                    time.sleep(self._backoff(attempt, None))
                    continue
                raise APIConnectionError(
                    f"cannot reach the preftune server at {self.base_url}: {exc}. Is `preftune serve` running? "
                    "Set PREFTUNE_BASE_URL to its address.",
                    code="connection_error",
                ) from exc
            if response.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                time.sleep(self._backoff(attempt, response))
                continue
            if response.status_code >= 400:
                raise error_from_response(response)
            if response.status_code == 204 or not response.content:
                return None
            return response.json()
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def stream(
        self,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
        json: Any = None,
    ) -> Iterator[httpx.Response]:
        """A request with a streamed body (GET, or POST with `json` for chat); raises the typed error
        for a non-2xx answer."""
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            send_headers = {**self._headers, **(headers or {})}
            with self._client.stream(
                method, self.url(path), params=clean_params, headers=send_headers, json=json
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise APIConnectionError(
                f"cannot reach the preftune server at {self.base_url}: {exc}", code="connection_error"
            ) from exc


def _rewind(files: Any) -> None:
    # A retried upload must send the file from its start again.
    values = files.values() if isinstance(files, Mapping) else [f for _, f in files]
    for value in values:
        handle = value[1] if isinstance(value, tuple) else value
        if hasattr(handle, "seek"):
            handle.seek(0)
