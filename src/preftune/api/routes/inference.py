"""Inference routes: `/v1/chat/completions`, `/v1/models`, `/v1/deployments` (OpenAI-compatible).

Thin: parse, resolve the model for the caller, hand the request to the engine, format the answer.
`startup(app)` creates the engine (`app.state.engine`) and the `InferenceService`
(`app.state.inference`) and restores deployments; `shutdown(app)` stops them.
A client that disconnects cancels its generation; a failing request never affects the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import StreamingResponse

from preftune.api.deps import get_owner, get_settings
from preftune.config import Settings
from preftune.errors import PreftuneError
from preftune.inference import openai_types as oai
from preftune.inference.engine import Generation
from preftune.inference.local import EngineConfig, LocalEngine
from preftune.inference.prompts import normalize_messages
from preftune.inference.types import Completion, Finished, TextDelta
from preftune.service import models as model_service
from preftune.service.keys import Caller
from preftune.service.serving import InferenceService, target_of
from preftune.store.models import Deployment

log = logging.getLogger("preftune.api.inference")
router = APIRouter(tags=["inference"])

# How often a non-streaming request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.25


async def startup(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    engine = LocalEngine(EngineConfig.from_settings(settings))
    await engine.start()
    app.state.engine = engine
    app.state.inference = InferenceService(engine, settings, app.state.db, app.state.blobs)
    await app.state.inference.restore()


async def shutdown(app: FastAPI) -> None:
    service: InferenceService | None = getattr(app.state, "inference", None)
    if service is not None:
        await service.close()
    engine: LocalEngine | None = getattr(app.state, "engine", None)
    if engine is not None:
        await engine.stop()


def get_inference(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.inference
    return service


# -- chat completions -----------------------------------------------------------------------
@router.post("/chat/completions", summary="Chat with a base or fine-tuned model (OpenAI format)")
async def chat_completions(
    body: oai.ChatCompletionRequest,
    request: Request,
    caller: Caller = Depends(get_owner),
    inference: InferenceService = Depends(get_inference),
) -> Any:
    """Answers in OpenAI's `chat.completion` format, or as server-sent `chat.completion.chunk`
    events ending with `data: [DONE]` when `stream` is true. A model that is not loaded is loaded
    first (a cold start) unless the server refuses on-demand loading."""
    body.check_supported()
    messages = normalize_messages(body.messages)
    target = await inference.resolve(caller.owner_id, body.model)
    await inference.ready(target)
    generations: list[Generation] = []
    try:
        for i in range(body.n):
            generations.append(await inference.engine.generate(target, messages, body.sampling(i)))
    except BaseException:
        for generation in generations:
            generation.cancel()
        raise
    id_, created = oai.completion_id(), oai.now()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(generations, id_, target.name, created, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    completions = await _collect_unless_disconnected(generations, request)
    for completion in completions:
        if completion.finish.reason == "error":
            raise PreftuneError(completion.finish.error or "generation failed", code="generation_failed")
    return oai.completion_object(
        id_,
        target.name,
        created,
        [(c.text, c.finish.reason) for c in completions],
        generations[0].prompt_tokens,
        sum(c.finish.completion_tokens for c in completions),
    )


async def _collect_unless_disconnected(generations: list[Generation], request: Request) -> list[Completion]:
    gathering = asyncio.ensure_future(asyncio.gather(*(g.collect() for g in generations)))
    try:
        while not gathering.done():
            await asyncio.wait({gathering}, timeout=DISCONNECT_POLL_SECONDS)
            if not gathering.done() and await request.is_disconnected():
                for generation in generations:
                    generation.cancel()
        return list(gathering.result())
    finally:
        if not gathering.done():
            gathering.cancel()
            for generation in generations:
                generation.cancel()


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _sse(
    generations: list[Generation], id_: str, model: str, created: int, include_usage: bool
) -> AsyncIterator[str]:
    """Interleave the `n` answers' chunks as they come; the client going away cancels them all."""
    queue: asyncio.Queue[tuple[int, TextDelta | Finished]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        async for event in generation:
            await queue.put((index, event))

    pumps = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    completion_tokens = 0
    try:
        for i in range(len(generations)):
            yield _event(oai.chunk_object(id_, model, created, i, {"role": "assistant", "content": ""}))
        remaining = len(generations)
        while remaining:
            index, event = await queue.get()
            if isinstance(event, TextDelta):
                if event.text:
                    yield _event(oai.chunk_object(id_, model, created, index, {"content": event.text}))
                continue
            remaining -= 1
            completion_tokens += event.completion_tokens
            if event.reason == "error":
                error = PreftuneError(event.error or "generation failed", code="generation_failed")
                yield _event({"error": error.to_dict()})
                return
            yield _event(oai.chunk_object(id_, model, created, index, {}, event.reason))
        if include_usage:
            prompt_tokens = generations[0].prompt_tokens
            yield _event(oai.usage_chunk(id_, model, created, prompt_tokens, completion_tokens))
        yield "data: [DONE]\n\n"
    finally:
        # Runs when the answer is complete and when the client disconnects (the response is cancelled).
        for generation in generations:
            generation.cancel()
        for task in pumps:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pumps, return_exceptions=True)


# -- models ---------------------------------------------------------------------------------
def _models(inference: InferenceService, settings: Settings, owner_id: str) -> list[oai.ModelObject]:
    from preftune.contracts.base_models import list_models

    loaded = {m.base_path for m in inference.engine.loaded()}
    out: list[oai.ModelObject] = []
    for info in list_models(settings.models_dir):
        if not info.available:
            continue
        created = int(info.path.stat().st_mtime) if info.path is not None else 0
        out.append(
            oai.ModelObject(
                id=info.name,
                created=created,
                owned_by="preftune",
                root=info.name,
                kind="base",
                loaded=info.path is not None and info.path.resolve() in {p.resolve() for p in loaded},
            )
        )
    with inference.db.session() as session:
        tuned = model_service.list_for_owner(session, owner_id)
    for model in tuned:
        target = target_of(model)
        out.append(
            oai.ModelObject(
                id=model.name,
                created=int(model.created_at or 0),
                owned_by=owner_id,
                root=str(model.base_model_path.name),
                parent=str(model.base_model_path.name),
                kind="fine-tuned",
                loaded=inference.engine.is_loaded(target)
                and (target.adapter_path is None or target.adapter_path in _adapters(inference, target)),
            )
        )
    return out


def _adapters(inference: InferenceService, target: Any) -> set[Any]:
    return {a for m in inference.engine.loaded() if m.base_path == target.base_path for a in m.adapters}


@router.get("/models", summary="List base models and your fine-tuned models")
async def list_models_route(
    caller: Caller = Depends(get_owner),
    inference: InferenceService = Depends(get_inference),
    settings: Settings = Depends(get_settings),
) -> dict[str, Any]:
    data = await asyncio.to_thread(_models, inference, settings, caller.owner_id)
    return {"object": "list", "data": [m.model_dump() for m in data]}


@router.get("/models/{model:path}", summary="Retrieve a model")
async def retrieve_model(
    model: str = Path(description="A base model name or one of your ft:… models"),
    caller: Caller = Depends(get_owner),
    inference: InferenceService = Depends(get_inference),
    settings: Settings = Depends(get_settings),
) -> dict[str, Any]:
    data = await asyncio.to_thread(_models, inference, settings, caller.owner_id)
    for entry in data:
        if entry.id == model:
            return entry.model_dump()
    # Not listed (e.g. a hub id in the local cache): answer if it resolves, 404 with advice if not.
    target = await inference.resolve(caller.owner_id, model)
    return oai.ModelObject(
        id=model,
        created=0,
        owned_by="preftune",
        root=model,
        kind="base",
        loaded=inference.engine.is_loaded(target),
    ).model_dump()


# -- deployments ----------------------------------------------------------------------------
def _deployment(
    record: Deployment, inference: InferenceService, status: str | None = None
) -> oai.DeploymentObject:
    return oai.DeploymentObject(
        id=record.id,
        model=record.model,
        min_replicas=record.min_replicas,
        status=status or record.status,  # type: ignore[arg-type]
        created_at=int(record.created_at),
        updated_at=int(record.updated_at),
        error=inference.errors.get(record.id),
    )


@router.post("/deployments", response_model=oai.DeploymentObject, summary="Keep a model loaded for chat")
async def create_deployment(
    body: oai.DeploymentCreate,
    caller: Caller = Depends(get_owner),
    inference: InferenceService = Depends(get_inference),
) -> oai.DeploymentObject:
    """Starts loading the model in the background (`status: loading`, then `ready` or `failed`)."""
    record = await inference.create_deployment(caller.owner_id, body.model, body.min_replicas)
    return _deployment(record, inference)


@router.get("/deployments", summary="List your deployments")
async def list_deployments(
    caller: Caller = Depends(get_owner), inference: InferenceService = Depends(get_inference)
) -> dict[str, Any]:
    records = await asyncio.to_thread(inference.list_deployments, caller.owner_id)
    return {"object": "list", "data": [_deployment(r, inference).model_dump() for r in records]}


@router.get(
    "/deployments/{deployment_id}", response_model=oai.DeploymentObject, summary="Retrieve a deployment"
)
async def get_deployment(
    deployment_id: str = Path(description="deploy-… id"),
    caller: Caller = Depends(get_owner),
    inference: InferenceService = Depends(get_inference),
) -> oai.DeploymentObject:
    record = await asyncio.to_thread(inference.get_deployment, caller.owner_id, deployment_id)
    return _deployment(record, inference)


@router.delete(
    "/deployments/{deployment_id}", response_model=oai.DeploymentObject, summary="Delete a deployment"
)
async def delete_deployment(
    deployment_id: str = Path(description="deploy-… id"),
    caller: Caller = Depends(get_owner),
    inference: InferenceService = Depends(get_inference),
) -> oai.DeploymentObject:
    """Releases the model: it stays loaded while busy or while another deployment holds it."""
    record = await inference.delete_deployment(caller.owner_id, deployment_id)
    return _deployment(record, inference, status="stopped")
