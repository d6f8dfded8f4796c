"""Deployments: models an owner asks to keep loaded for chat. The inference routes drive the status."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from preftune.errors import InvalidRequestError, NotFoundError
from preftune.service.common import new_id, now
from preftune.store.models import Deployment

STATUSES = ("pending", "loading", "ready", "failed", "stopped")
MAX_REPLICAS = 16


def create_deployment(session: Session, owner_id: str, model: str, *, min_replicas: int = 1) -> Deployment:
    """Record a deployment of `model` (its name is checked by the caller with `models.resolve_for_owner`)."""
    if not model:
        raise InvalidRequestError("model is required", param="model")
    if not 0 <= min_replicas <= MAX_REPLICAS:
        raise InvalidRequestError(
            f"min_replicas must be between 0 and {MAX_REPLICAS} (got {min_replicas})", param="min_replicas"
        )
    stamp = now()
    record = Deployment(
        id=new_id("deploy"),
        owner_id=owner_id,
        model=model,
        min_replicas=min_replicas,
        status="pending",
        created_at=stamp,
        updated_at=stamp,
    )
    session.add(record)
    session.commit()
    return record


def get_deployment(session: Session, owner_id: str, deployment_id: str) -> Deployment:
    record = session.get(Deployment, deployment_id)
    if record is None or record.owner_id != owner_id:
        raise NotFoundError(
            f"deployment {deployment_id!r} not found", param="deployment_id", code="deployment_not_found"
        )
    return record


def list_deployments(session: Session, owner_id: str) -> list[Deployment]:
    return list(
        session.scalars(
            select(Deployment)
            .where(Deployment.owner_id == owner_id)
            .order_by(Deployment.created_at.desc(), Deployment.id.desc())
        )
    )


def set_deployment_status(session: Session, owner_id: str, deployment_id: str, status: str) -> Deployment:
    if status not in STATUSES:
        raise InvalidRequestError(
            f"status must be one of {', '.join(STATUSES)} (got {status!r})", param="status"
        )
    record = get_deployment(session, owner_id, deployment_id)
    record.status = status
    record.updated_at = now()
    session.commit()
    return record


def delete_deployment(session: Session, owner_id: str, deployment_id: str) -> Deployment:
    record = get_deployment(session, owner_id, deployment_id)
    session.delete(record)
    session.commit()
    return record
