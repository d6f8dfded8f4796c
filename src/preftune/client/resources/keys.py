"""`client.keys`: create, list and revoke API keys."""

from __future__ import annotations

from preftune.client._base import HTTPTransport
from preftune.client.types import APIKey, APIKeyCreated


class Keys:
    def __init__(self, transport: HTTPTransport) -> None:
        self._t = transport

    def create(self, name: str, *, new_owner: bool = False) -> APIKeyCreated:
        """A new key for your owner (or, for an admin with `new_owner=True`, for a new owner).
        The secret is in `.key`, shown this once."""
        body = self._t.request("POST", "/keys", json={"name": name, "new_owner": new_owner})
        return APIKeyCreated.model_validate(body)

    def list(self) -> list[APIKey]:
        body = self._t.request("GET", "/keys")
        return [APIKey.model_validate(item) for item in body["data"]]

    def revoke(self, key_id: str) -> APIKey:
        return APIKey.model_validate(self._t.request("DELETE", f"/keys/{key_id}"))
