"""`/v1/keys`: create, list and revoke API keys (the secret is shown once, at creation)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path
from sqlalchemy.orm import Session

from preftune.api import presenters, schemas
from preftune.api.deps import get_db, get_owner
from preftune.service import keys as key_service
from preftune.service.keys import Caller

router = APIRouter(tags=["keys"])


@router.post(
    "/keys",
    response_model=schemas.APIKeyCreated,
    responses={403: {"description": "new_owner without an admin key"}},
    summary="Create an API key",
)
def create_key(
    body: schemas.KeyCreate, caller: Caller = Depends(get_owner), session: Session = Depends(get_db)
) -> schemas.APIKeyCreated:
    """A key for your owner; an admin may pass `new_owner: true` to create a separate owner."""
    record, secret = key_service.create_key_for_caller(session, caller, body.name, new_owner=body.new_owner)
    return schemas.APIKeyCreated(**presenters.key_object(record).model_dump(), key=secret)


@router.get("/keys", response_model=schemas.ListResponse[schemas.APIKey], summary="List your API keys")
def list_keys(
    caller: Caller = Depends(get_owner), session: Session = Depends(get_db)
) -> schemas.ListResponse[schemas.APIKey]:
    data = [presenters.key_object(k) for k in key_service.list_keys(session, caller.owner_id)]
    return schemas.ListResponse[schemas.APIKey](
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


@router.delete("/keys/{key_id}", response_model=schemas.APIKey, summary="Revoke an API key")
def revoke_key(
    key_id: str = Path(description="key-… id"),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
) -> schemas.APIKey:
    """Requests with the key get 401 from now on. Revoking twice is harmless."""
    return presenters.key_object(key_service.revoke_key(session, caller.owner_id, key_id))
