"""`/v1/keys`: create, list and revoke API keys (the secret is shown once, at creation)."""

from __future__ import annotations

from fastapi import APIRouter, Path

from preftune.api.deps import CallerDep, SessionDep
from preftune.api.dialects.native import presenters, schemas
from preftune.api.pagination import ListResponse, list_response
from preftune.service import keys as key_service

router = APIRouter(tags=["keys"])


@router.post(
    "/keys",
    response_model=schemas.APIKeyCreated,
    responses={403: {"description": "new_owner without an admin key"}},
    summary="Create an API key",
)
def create_key(*, body: schemas.KeyCreate, caller: CallerDep, session: SessionDep) -> schemas.APIKeyCreated:
    """A key for your owner; an admin may pass `new_owner: true` to create a separate owner."""
    record, secret = key_service.create_key_for_caller(session, caller, body.name, new_owner=body.new_owner)
    return schemas.APIKeyCreated(**presenters.key_object(record).model_dump(), key=secret)


@router.get("/keys", response_model=ListResponse[schemas.APIKey], summary="List your API keys")
def list_keys(*, caller: CallerDep, session: SessionDep) -> ListResponse[schemas.APIKey]:
    return list_response([presenters.key_object(k) for k in key_service.list_keys(session, caller.owner_id)])


@router.delete("/keys/{key_id}", response_model=schemas.APIKey, summary="Revoke an API key")
def revoke_key(
    *,
    key_id: str = Path(description="key-… id"),
    caller: CallerDep,
    session: SessionDep,
) -> schemas.APIKey:
    """Requests with the key get 401 from now on. Revoking twice is harmless."""
    return presenters.key_object(key_service.revoke_key(session, caller.owner_id, key_id))
