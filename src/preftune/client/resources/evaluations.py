"""`client.evaluations`: judge a model or adapter on held-out preference pairs, on the server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from preftune.client._base import HTTPTransport
from preftune.client.pagination import Page
from preftune.client.types import Evaluation


class Evaluations:
    def __init__(self, transport: HTTPTransport) -> None:
        self._t = transport

    def create(
        self,
        *,
        model: str,
        file: str,
        base: str | None = None,
        beta: float | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> Evaluation:
        """Queue an evaluation of `model` (a fine-tuned model or a base model) on the uploaded
        preference file `file`; a runner computes the held-out figures of it and of its base model."""
        body: dict[str, Any] = {"model": model, "file": file}
        for key, value in (
            ("base", base),
            ("beta", beta),
            ("max_length", max_length),
            ("batch_size", batch_size),
        ):
            if value is not None:
                body[key] = value
        return Evaluation.model_validate(self._t.request("POST", "/evaluations", json=body))

    def retrieve(self, evaluation_id: str) -> Evaluation:
        return Evaluation.model_validate(self._t.request("GET", f"/evaluations/{evaluation_id}"))

    def list(self, *, limit: int | None = None, after: str | None = None) -> Page[Evaluation]:
        """Your evaluations, newest first; iterate the page to walk every later page too."""
        body = self._t.request("GET", "/evaluations", params={"limit": limit, "after": after})
        return Page(
            [Evaluation.model_validate(item) for item in body["data"]],
            bool(body.get("has_more")),
            lambda cursor: self.list(limit=limit, after=cursor),
        )

    def wait(
        self,
        evaluation_id: str,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[Evaluation], None] | None = None,
    ) -> Evaluation:
        """Poll until the evaluation is completed or failed; `TimeoutError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            evaluation = self.retrieve(evaluation_id)
            if on_update:
                on_update(evaluation)
            if evaluation.done:
                return evaluation
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"evaluation {evaluation_id} is still {evaluation.status} after {timeout:g}s"
                )
            time.sleep(poll_interval)
