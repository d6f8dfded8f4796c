"""What the inference routes call: model names to weights, cold starts, and deployments.

`InferenceService` sits between the HTTP routes and an `InferenceEngine`:
- it resolves a model name for an owner (base models by name, fine-tuned `ft:…` names through
  `preftune.service.models`) to a `ModelTarget`;
- it makes a target ready: already in memory, or loaded on demand (the cold start: reading the
  base weights once, then every fine-tune of that base only adds its small adapter) unless the
  server is configured to refuse that (`PREFTUNE_ALLOW_ON_DEMAND_LOAD=false`);
- it drives deployments: a deployment pins its model in memory, loads in the background
  (`loading` -> `ready` | `failed`), and is restored when the server starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from preftune.config import Settings
from preftune.errors import InvalidRequestError, ModelNotFoundError, PreftuneError
from preftune.inference.engine import InferenceEngine
from preftune.inference.types import ModelTarget
from preftune.service import artifacts
from preftune.service import deployments as deployment_service
from preftune.service import models as model_service
from preftune.store.blobs import BlobStore
from preftune.store.db import Database
from preftune.store.models import Deployment

log = logging.getLogger(__name__)


def target_of(resolved: model_service.ResolvedModel) -> ModelTarget:
    """A merged or fully fine-tuned model loads as a base of its own; a LoRA one rides on its base."""
    if resolved.merged_path is not None:
        return ModelTarget(resolved.name, resolved.merged_path, None)
    return ModelTarget(resolved.name, resolved.base_model_path, resolved.adapter_path)


class InferenceService:
    def __init__(
        self, engine: InferenceEngine, settings: Settings, db: Database, blobs: BlobStore | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.db = db
        self.blobs = blobs
        self._deployed: dict[str, ModelTarget] = {}  # deployment id -> target held in memory
        self.errors: dict[str, str] = {}  # deployment id -> why it failed to load
        self._tasks: set[asyncio.Task[None]] = set()

    # -- names ----------------------------------------------------------------------------
    def _resolve_sync(self, owner_id: str, name: str) -> ModelTarget:
        if not name or name.startswith(("/", ".", "~")) or "\\" in name:
            raise ModelNotFoundError(
                f"model {name!r} not found: the API serves models by name only; import a local model "
                "directory first with `preftune models import DIR`, then use its name.",
                param="model",
                code="model_not_found",
            )
        with self.db.session() as session:
            resolved = model_service.resolve_for_owner(
                session, owner_id, name, models_dir=self.settings.models_dir
            )
        return target_of(self._here(resolved))

    def _here(self, resolved: model_service.ResolvedModel) -> model_service.ResolvedModel:
        """A fine-tuned model trained on another machine: its weights fetched from the blob store, its
        base model found by name among this server's models."""
        if self.blobs is None or not self.blobs.remote or resolved.job_id is None:
            return resolved
        from dataclasses import replace

        from preftune.contracts.base_models import resolve_model

        base = resolved.base_model_path
        if not base.exists() and resolved.base_model:
            base = resolve_model(resolved.base_model, self.settings.models_dir)
        adapter = resolved.adapter_path
        merged = resolved.merged_path
        return replace(
            resolved,
            base_model_path=base,
            adapter_path=artifacts.local_artifact(self.settings, self.blobs, adapter) if adapter else None,
            merged_path=artifacts.local_artifact(self.settings, self.blobs, merged) if merged else None,
        )

    async def resolve(self, owner_id: str, name: str) -> ModelTarget:
        # The first use of the embedded model imports it (tens of seconds): keep it off the event loop.
        return await asyncio.to_thread(self._resolve_sync, owner_id, name)

    def is_deployed(self, target: ModelTarget) -> bool:
        return any(t.key == target.key for t in self._deployed.values())

    async def ready(self, target: ModelTarget) -> None:
        """Make sure `target` can answer now: in memory, or loaded on demand (a cold start).

        With on-demand loading refused, only deployed models answer (whatever happens to be in memory).
        """
        if not self.settings.allow_on_demand_load and not self.is_deployed(target):
            raise InvalidRequestError(
                f"model {target.name!r} is not deployed and this server does not load models on demand; "
                f"deploy it first: preftune deployments create {target.name}",
                param="model",
                code="model_not_deployed",
            )
        if not self._in_memory(target):
            await self.engine.load(target)

    def _in_memory(self, target: ModelTarget) -> bool:
        for model in self.engine.loaded():
            if model.base_path == target.base_path:
                return target.adapter_path is None or target.adapter_path in model.adapters
        return False

    # -- deployments ----------------------------------------------------------------------
    def _set_status(self, owner_id: str, deployment_id: str, status: str) -> None:
        # Deleted while loading: nothing to record.
        with self.db.session() as session, contextlib.suppress(PreftuneError):
            deployment_service.set_deployment_status(session, owner_id, deployment_id, status)

    async def _bring_up(self, record_id: str, owner_id: str, target: ModelTarget, pin: bool) -> None:
        await asyncio.to_thread(self._set_status, owner_id, record_id, "loading")
        try:
            if pin:
                self._deployed[record_id] = target
            await self.engine.load(target, pin_as=record_id if pin else None)
        except Exception as exc:
            self._deployed.pop(record_id, None)
            message = exc.message if isinstance(exc, PreftuneError) else f"{type(exc).__name__}: {exc}"
            self.errors[record_id] = message
            log.error("deployment %s of %s failed: %s", record_id, target.name, message)
            await asyncio.to_thread(self._set_status, owner_id, record_id, "failed")
            return
        if pin and record_id not in self._deployed:  # deleted while it was loading
            await self.engine.unpin(target, record_id)
            return
        self.errors.pop(record_id, None)
        await asyncio.to_thread(self._set_status, owner_id, record_id, "ready")

    def _spawn(self, record_id: str, owner_id: str, target: ModelTarget, pin: bool) -> None:
        task = asyncio.create_task(self._bring_up(record_id, owner_id, target, pin))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def create_deployment(self, owner_id: str, model: str, min_replicas: int) -> Deployment:
        target = await self.resolve(owner_id, model)

        def create() -> Deployment:
            with self.db.session() as session:
                record = deployment_service.create_deployment(
                    session, owner_id, target.name, min_replicas=min_replicas
                )
                session.expunge(record)
                return record

        record = await asyncio.to_thread(create)
        if min_replicas >= 1:
            record.status = "loading"
            self._spawn(record.id, owner_id, target, pin=True)
        else:  # scale-to-zero: recorded, loaded by the first request
            await asyncio.to_thread(self._set_status, owner_id, record.id, "ready")
            record.status = "ready"
        return record

    async def delete_deployment(self, owner_id: str, deployment_id: str) -> Deployment:
        def delete() -> Deployment:
            with self.db.session() as session:
                record = deployment_service.delete_deployment(session, owner_id, deployment_id)
                session.expunge(record)
                return record

        record = await asyncio.to_thread(delete)
        target = self._deployed.pop(deployment_id, None)
        self.errors.pop(deployment_id, None)
        if target is not None:
            await self.engine.unpin(target, deployment_id)
        record.status = "stopped"
        return record

    def list_deployments(self, owner_id: str) -> list[Deployment]:
        with self.db.session() as session:
            records = deployment_service.list_deployments(session, owner_id)
            session.expunge_all()
            return records

    def get_deployment(self, owner_id: str, deployment_id: str) -> Deployment:
        with self.db.session() as session:
            record = deployment_service.get_deployment(session, owner_id, deployment_id)
            session.expunge(record)
            return record

    async def restore(self) -> None:
        """Bring every deployment back after a restart (in the background: the server answers meanwhile)."""

        def every() -> list[Any]:
            from sqlalchemy import select

            with self.db.session() as session:
                rows = list(session.scalars(select(Deployment)))
                session.expunge_all()
                return rows

        for record in await asyncio.to_thread(every):
            if record.min_replicas < 1:
                continue
            try:
                target = await self.resolve(record.owner_id, record.model)
            except PreftuneError as exc:
                self.errors[record.id] = exc.message
                await asyncio.to_thread(self._set_status, record.owner_id, record.id, "failed")
                continue
            self._spawn(record.id, record.owner_id, target, pin=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
