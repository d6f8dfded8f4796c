"""`/v1/keys`: the secret once, hashed storage, revocation, admin-only new owners."""

from __future__ import annotations

from typing import Any


def test_create_list_revoke(api: Any) -> None:
    created = api.client.post("/v1/keys", json={"name": "ci"}, headers=api.headers()).json()
    assert created["key"].startswith("pt-") and created["prefix"] == created["key"][:10]
    listed = api.client.get("/v1/keys", headers=api.headers()).json()["data"]
    assert created["id"] in [k["id"] for k in listed]
    assert all("key" not in k for k in listed)
    assert api.client.get("/v1/files", headers=api.headers(created["key"])).status_code == 200

    revoked = api.client.delete(f"/v1/keys/{created['id']}", headers=api.headers()).json()
    assert revoked["revoked_at"] is not None
    assert api.client.get("/v1/files", headers=api.headers(created["key"])).status_code == 401


def test_new_owner_needs_admin_and_is_isolated(api: Any) -> None:
    refused = api.client.post(
        "/v1/keys", json={"name": "x", "new_owner": True}, headers=api.headers(api.key_b)
    )
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "new_owner"
    created = api.client.post(
        "/v1/keys", json={"name": "carol", "new_owner": True}, headers=api.headers()
    ).json()
    mine = api.client.get("/v1/keys", headers=api.headers()).json()["data"]
    assert created["owner_id"] not in {k["owner_id"] for k in mine}
    # Another owner's key cannot be revoked: it is not found.
    response = api.client.delete(f"/v1/keys/{created['id']}", headers=api.headers(api.key_b))
    assert response.status_code == 404
