"""`client.deployments`: keep models loaded for chat (create, list, retrieve, delete, wait)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

from preftune.client._base import HTTPTransport
from preftune.errors import PreftuneError

__all__ = ["Deployment", "Deployments"]


class Deployment(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    object: Literal["deployment"] = "deployment"
    model: str
    min_replicas: int
    status: Literal["pending", "loading", "ready", "failed", "stopped"]
    created_at: int
    updated_at: int
    error: str | None = None


class Deployments:
    def __init__(self, transport: HTTPTransport) -> None:
        self._t = transport

    def create(
        self, model: str, *, min_replicas: int = 1, wait: bool = False, timeout: float = 600.0
    ) -> Deployment:
        """Deploy `model` (loading starts in the background); with `wait=True`, return once it is ready."""
        body = self._t.request("POST", "/deployments", json={"model": model, "min_replicas": min_replicas})
        deployment = Deployment.model_validate(body)
        return self.wait(deployment.id, timeout=timeout) if wait else deployment

    def list(self) -> list[Deployment]:
        return [Deployment.model_validate(item) for item in self._t.request("GET", "/deployments")["data"]]

    def retrieve(self, deployment_id: str) -> Deployment:
        return Deployment.model_validate(self._t.request("GET", f"/deployments/{deployment_id}"))

    def delete(self, deployment_id: str) -> Deployment:
        return Deployment.model_validate(self._t.request("DELETE", f"/deployments/{deployment_id}"))

    def wait(self, deployment_id: str, *, timeout: float = 600.0, poll: float = 0.5) -> Deployment:
        """Poll until the deployment is `ready`; raises with the server's reason if it `failed`."""
        deadline = time.monotonic() + timeout
        while True:
            deployment = self.retrieve(deployment_id)
            if deployment.status == "ready":
                return deployment
            if deployment.status in ("failed", "stopped"):
                raise PreftuneError(
                    f"deployment {deployment_id} of {deployment.model} {deployment.status}: "
                    f"{deployment.error or 'see the server log'}",
                    code="deployment_failed",
                )
            if time.monotonic() > deadline:
                raise PreftuneError(
                    f"deployment {deployment_id} is still {deployment.status} after {timeout:.0f}s",
                    code="deployment_timeout",
                )
            time.sleep(poll)
