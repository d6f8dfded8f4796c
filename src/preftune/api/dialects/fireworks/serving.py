"""Fireworks' deployments and chat, over the same inference service as the OpenAI dialect.

`POST /v1/accounts/{account_id}/deployments {baseModel: accounts/A/models/ft-<hex>}` keeps the
fine-tuned model loaded; chat answers at `POST /inference/v1/chat/completions` (Fireworks' REST
address) and, for the `fireworks-ai` client (which posts to `/v1/chat/completions` when its base
URL is overridden), at `/v1/chat/completions` too, with `model` the Fireworks model name (also
`accounts/A/models/ID#accounts/A/deployments/DID`). The OpenAI chat route does the rest.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from preftune.api.deps import CallerDep, DatabaseDep
from preftune.api.dialects.fireworks import routes as fw_routes
from preftune.api.dialects.fireworks.routes import AccountDep
from preftune.api.dialects.fireworks.schemas import Status
from preftune.api.dialects.openai import inference as openai_inference
from preftune.api.dialects.openai.inference import InferenceDep
from preftune.api.dialects.select import DialectRoute
from preftune.errors import InvalidRequestError, NotFoundError
from preftune.inference import openai_types as oai
from preftune.service.serving import InferenceService
from preftune.store.models import Deployment

router = APIRouter(tags=["fireworks"])
# The SDK's chat, at the OpenAI path: only for Fireworks' client (or X-Preftune-Dialect: fireworks).
shared = APIRouter(
    tags=["fireworks"], route_class=DialectRoute.for_dialect("fireworks"), include_in_schema=False
)
inference_router = APIRouter(tags=["fireworks"])

STATES = {
    "pending": "CREATING",
    "loading": "CREATING",
    "ready": "READY",
    "failed": "FAILED",
    "stopped": "DELETED",
}


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    baseModel: str = Field(
        description="accounts/ACCOUNT/models/ft-… (a DPO job's output model) or a base model"
    )
    displayName: str | None = None
    minReplicaCount: int | None = Field(default=None, ge=0, le=1)


class FireworksDeployment(BaseModel):
    name: str
    baseModel: str
    displayName: str | None = None
    state: str
    status: Status
    createTime: str
    updateTime: str
    minReplicaCount: int
    replicaCount: int


class DeploymentList(BaseModel):
    deployments: list[FireworksDeployment]
    nextPageToken: str = ""
    totalSize: int


def _iso(value: float) -> str:
    return datetime.fromtimestamp(value, tz=UTC).isoformat().replace("+00:00", "Z")


def deployment_object(
    account: str, record: Deployment, inference: InferenceService, base_model: str
) -> FireworksDeployment:
    error = inference.errors.get(record.id)
    state = STATES.get(record.status, "CREATING")
    return FireworksDeployment(
        name=f"accounts/{account}/deployments/{record.id}",
        baseModel=base_model,
        state=state,
        status=Status(code="INTERNAL" if error else "OK", message=error or ""),
        createTime=_iso(record.created_at),
        updateTime=_iso(record.updated_at),
        minReplicaCount=record.min_replicas,
        replicaCount=1 if state == "READY" else 0,
    )


async def _preftune_model(db: Any, owner_id: str, model: str) -> str:
    def resolve() -> str:
        with db.session() as session:
            return fw_routes.fine_tuned_name(session, owner_id, model)

    return await run_in_threadpool(resolve)


@router.post(
    "/accounts/{account_id}/deployments", response_model=FireworksDeployment, summary="Deploy a model"
)
async def create_deployment(
    *,
    body: DeploymentCreate,
    deploymentId: str | None = Query(None),
    caller: AccountDep,
    db: DatabaseDep,
    inference: InferenceDep,
) -> FireworksDeployment:
    """Loads the model in the background (`state: CREATING`, then `READY` or `FAILED`)."""
    if deploymentId:
        raise InvalidRequestError(
            "deploymentId: preftune chooses deployment ids; omit it", param="deploymentId"
        )
    model = await _preftune_model(db, caller.owner_id, body.baseModel)
    replicas = 1 if body.minReplicaCount is None else body.minReplicaCount
    record = await inference.create_deployment(caller.owner_id, model, replicas)
    return deployment_object(caller.owner_id, record, inference, body.baseModel)


def _base_model_name(account: str, record: Deployment) -> str:
    """The Fireworks name of a deployment's model (`ft:<base>:<suffix>:ftjob-X` -> accounts/A/models/ft-X)."""
    job = record.model.rsplit(":", 1)[-1]
    if record.model.startswith("ft:") and job.startswith(fw_routes.JOB_PREFIX):
        return f"accounts/{account}/models/{fw_routes.model_id(job)}"
    return record.model


@router.get("/accounts/{account_id}/deployments", response_model=DeploymentList, summary="List deployments")
async def list_deployments(*, caller: AccountDep, inference: InferenceDep) -> DeploymentList:
    records = await asyncio.to_thread(inference.list_deployments, caller.owner_id)
    items = [
        deployment_object(caller.owner_id, r, inference, _base_model_name(caller.owner_id, r))
        for r in records
    ]
    return DeploymentList(deployments=items, totalSize=len(items))


@router.get(
    "/accounts/{account_id}/deployments/{deployment_id}",
    response_model=FireworksDeployment,
    summary="Get a deployment",
)
async def get_deployment(
    *, deployment_id: str = Path(description="deploy-…"), caller: AccountDep, inference: InferenceDep
) -> FireworksDeployment:
    record = await asyncio.to_thread(inference.get_deployment, caller.owner_id, deployment_id)
    return deployment_object(caller.owner_id, record, inference, _base_model_name(caller.owner_id, record))


@router.delete(
    "/accounts/{account_id}/deployments/{deployment_id}",
    response_model=FireworksDeployment,
    summary="Delete a deployment",
)
async def delete_deployment(
    *, deployment_id: str = Path(description="deploy-…"), caller: AccountDep, inference: InferenceDep
) -> FireworksDeployment:
    record = await inference.delete_deployment(caller.owner_id, deployment_id)
    return deployment_object(caller.owner_id, record, inference, _base_model_name(caller.owner_id, record))


async def _chat(
    body: oai.ChatCompletionRequest, request: Request, caller: Any, db: Any, inference: InferenceService
) -> Any:
    try:
        body.model = await _preftune_model(db, caller.owner_id, body.model)
    except NotFoundError as exc:
        raise NotFoundError(exc.message, param="model") from exc
    return await openai_inference.chat_completions(
        body=body, request=request, caller=caller, inference=inference
    )


@inference_router.post("/inference/v1/chat/completions", summary="Chat (Fireworks' inference address)")
async def chat_completions(
    *,
    body: oai.ChatCompletionRequest,
    request: Request,
    caller: CallerDep,
    db: DatabaseDep,
    inference: InferenceDep,
) -> Any:
    """OpenAI's chat format; `model` may be a Fireworks model name (`accounts/A/models/ft-…`)."""
    return await _chat(body, request, caller, db, inference)


@shared.post("/chat/completions", summary="Chat (the fireworks-ai client's path)")
async def chat_completions_sdk(
    *,
    body: oai.ChatCompletionRequest,
    request: Request,
    caller: CallerDep,
    db: DatabaseDep,
    inference: InferenceDep,
) -> Any:
    return await _chat(body, request, caller, db, inference)


# Under /v1 (the shared chat before the OpenAI route), and the inference address at the root.
routers: list[Any] = [shared, router, (inference_router, "")]
