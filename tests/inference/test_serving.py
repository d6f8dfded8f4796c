"""`InferenceService` with on-demand loading refused: only deployed models answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from helpers.models import install_base_model
from preftune.config import Settings
from preftune.errors import InvalidRequestError
from preftune.inference.local import LocalEngine
from preftune.service import keys as key_service
from preftune.service.serving import InferenceService
from preftune.store.db import open_database


def test_without_on_demand_loading_only_deployed_models_answer(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = Settings(home=tmp_path / "home", allow_on_demand_load=False)
    install_base_model(settings.home, tiny_model_dir)
    db = open_database(settings)
    with db.session() as session:
        owner = key_service.create_owner(session, "o").id

    async def scenario() -> None:
        engine = LocalEngine()
        await engine.start()
        service = InferenceService(engine, settings, db)
        try:
            target = await service.resolve(owner, "tiny-llama")
            with pytest.raises(InvalidRequestError, match="deployments create tiny-llama") as info:
                await service.ready(target)
            assert info.value.code == "model_not_deployed"
            assert not engine.is_loaded(target)
            record = await service.create_deployment(owner, "tiny-llama", 1)
            for _ in range(600):
                if service.get_deployment(owner, record.id).status == "ready":
                    break
                await asyncio.sleep(0.1)
            assert service.get_deployment(owner, record.id).status == "ready"
            await service.ready(target)  # deployed: answers
            await service.delete_deployment(owner, record.id)
            with pytest.raises(InvalidRequestError):
                await service.ready(target)
        finally:
            await service.close()
            await engine.stop()
            db.dispose()

    asyncio.run(scenario())
