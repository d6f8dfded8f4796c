"""Jobs as users see them: validated creation (nothing queued on bad input), idempotency, listing,
cancel, events, ownership, secrets and `from_checkpoint`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from preftune.config import Settings
from preftune.errors import (
    ConflictError,
    DataValidationError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    TrainingSpecError,
)
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.store.blobs import BlobStore
from preftune.store.db import Database
from preftune.store.models import Job


def _count_jobs(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _create(db: Database, settings: Settings, owner: str, file_id: str, model: Path, **kw: Any) -> Job:
    with db.session() as session:
        return job_service.create_job(
            session, owner, model=str(model), training_file=file_id, settings=settings, **kw
        )


def test_create_queues_with_resolved_hyperparameters_and_ordered_events(
    db: Database, settings: Settings, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    job = _create(
        db,
        settings,
        alice.owner_id,
        orca_file_id,
        tiny_model_dir,
        params={"dpo_beta": 0.2, "rpo_alpha": 1.0, "suffix": "demo", "wandb_api_key": "secret-wandb"},
    )
    assert job.id.startswith("ftjob-") and job.status == "queued" and job.attempts == 0
    hp = job_service.public_hyperparameters(job)
    assert hp["dpo_beta"] == 0.2 and hp["rpo_alpha"] == 1.0 and hp["lora"] is True
    assert "wandb_api_key" not in hp and hp["wandb_api_key_set"] is True
    assert "secret-wandb" not in str(hp)
    # Stored encrypted: the clear key is nowhere in the row.
    assert "secret-wandb" not in str(job.spec)
    assert str(job.spec["wandb_api_key"]).startswith("fernet:")
    with db.session() as session:
        events = job_service.list_events(session, alice.owner_id, job.id).data
        assert [e.type for e in events] == ["JOB_PENDING", "JOB_QUEUED"]
        assert events[0].seq < events[1].seq and events[1].id == f"ftevent-{events[1].seq}"
        newest_first = job_service.list_events(session, alice.owner_id, job.id, order="desc").data
        assert [e.type for e in newest_first] == ["JOB_QUEUED", "JOB_PENDING"]
        after = job_service.list_events(session, alice.owner_id, job.id, after=events[0].id).data
        assert [e.type for e in after] == ["JOB_QUEUED"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"dpo_beta": -1}, "dpo_beta"),
        ({"lora_r": 0}, "lora_r"),
        ({"not_a_knob": 1}, "not_a_knob"),
        ({"simpo_gamma": 1.0, "dpo_loss_type": "ipo"}, "simpo_gamma"),
    ],
)
def test_bad_knob_names_the_parameter_and_queues_nothing(
    db: Database,
    settings: Settings,
    alice: Any,
    orca_file_id: str,
    tiny_model_dir: Path,
    params: dict[str, Any],
    param: str,
) -> None:
    with pytest.raises(TrainingSpecError) as info:
        _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, params=params)
    assert info.value.param == param
    assert _count_jobs(db) == 0


def test_bad_file_or_model_is_refused_naming_the_parameter(
    db: Database,
    blobs: BlobStore,
    settings: Settings,
    alice: Any,
    bob: Any,
    orca_file_id: str,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "only one"}\n')
    with db.session() as session:
        bad_id = file_service.create_file(
            session, alice.owner_id, blobs.stage_path(bad), blobs=blobs, filename="bad.jsonl"
        ).id
    with pytest.raises(DataValidationError) as info:
        _create(db, settings, alice.owner_id, bad_id, tiny_model_dir)
    assert info.value.param == "training_file" and "files retrieve" in info.value.message
    with pytest.raises(NotFoundError) as missing:
        _create(db, settings, bob.owner_id, orca_file_id, tiny_model_dir)  # alice's file
    assert missing.value.param == "training_file"
    with pytest.raises(ModelNotFoundError) as model:
        _create(db, settings, alice.owner_id, orca_file_id, tmp_path / "no-such-model")
    assert model.value.param == "model"
    with pytest.raises(DataValidationError) as fmt:  # preference data for an SFT job
        _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, params={"training_method": "sft"})
    assert fmt.value.param == "training_file" and "training_method" in fmt.value.message
    with pytest.raises(NotFoundError) as val:
        _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, validation_file="file-nope")
    assert val.value.param == "validation_file"
    assert _count_jobs(db) == 0


def test_idempotency_key_returns_the_first_job(
    db: Database, settings: Settings, alice: Any, bob: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    first = _create(
        db,
        settings,
        alice.owner_id,
        orca_file_id,
        tiny_model_dir,
        idempotency_key="k1",
        params={"dpo_beta": 0.3},
    )
    again = _create(
        db,
        settings,
        alice.owner_id,
        orca_file_id,
        tiny_model_dir,
        idempotency_key="k1",
        params={"dpo_beta": 0.3},
    )
    assert again.id == first.id and _count_jobs(db) == 1
    with pytest.raises(ConflictError) as info:
        _create(
            db,
            settings,
            alice.owner_id,
            orca_file_id,
            tiny_model_dir,
            idempotency_key="k1",
            params={"dpo_beta": 0.5},
        )
    assert info.value.param == "Idempotency-Key"
    other = _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, idempotency_key="k2")
    assert other.id != first.id and _count_jobs(db) == 2


def test_list_pages_and_filters(
    db: Database, settings: Settings, alice: Any, bob: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    ids = [_create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir).id for _ in range(3)]
    with db.session() as session:
        page = job_service.list_jobs(session, alice.owner_id, limit=2)
        assert [j.id for j in page.data] == ids[::-1][:2] and page.has_more
        rest = job_service.list_jobs(session, alice.owner_id, limit=2, after=page.last_id)
        assert [j.id for j in rest.data] == [ids[0]] and not rest.has_more
        assert job_service.list_jobs(session, bob.owner_id).data == []
        job_service.cancel_job(session, alice.owner_id, ids[1])
        assert [j.id for j in job_service.list_jobs(session, alice.owner_id, status="cancelled").data] == [
            ids[1]
        ]


def test_cancel_a_queued_job_at_once_and_refuse_a_finished_one(
    db: Database, settings: Settings, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    job = _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    with db.session() as session:
        cancelled = job_service.cancel_job(session, alice.owner_id, job.id)
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        with pytest.raises(ConflictError) as info:
            job_service.cancel_job(session, alice.owner_id, job.id)
        assert "nothing to cancel" in info.value.message
        types = [e.type for e in job_service.list_events(session, alice.owner_id, job.id).data]
        assert types[-1] == "JOB_CANCELLED"


def test_another_owners_job_is_not_found_everywhere(
    db: Database, settings: Settings, alice: Any, bob: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    job = _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    calls = [
        lambda s: job_service.get_job(s, bob.owner_id, job.id),
        lambda s: job_service.cancel_job(s, bob.owner_id, job.id),
        lambda s: job_service.list_events(s, bob.owner_id, job.id),
        lambda s: job_service.list_metrics(s, bob.owner_id, job.id),
        lambda s: job_service.list_metric_rows(s, bob.owner_id, job.id),
        lambda s: job_service.list_checkpoints(s, bob.owner_id, job.id),
        lambda s: job_service.artifact_path(s, bob.owner_id, job.id, settings),
    ]
    with db.session() as session:
        for call in calls:
            with pytest.raises(NotFoundError) as info:
                call(session)
            assert info.value.message == f"fine-tuning job {job.id!r} not found"
        assert job_service.get_job(session, alice.owner_id, job.id).status == "queued"
    with pytest.raises(NotFoundError) as ref:
        _create(db, settings, bob.owner_id, orca_file_id, tiny_model_dir, params={"from_checkpoint": job.id})
    assert ref.value.param in ("training_file", "from_checkpoint")


def test_from_checkpoint_must_be_an_own_job_with_output(
    db: Database,
    blobs: BlobStore,
    settings: Settings,
    alice: Any,
    bob: Any,
    orca_file_id: str,
    tiny_model_dir: Path,
    small_orca: Path,
) -> None:
    job = _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    with pytest.raises(NotFoundError) as early:
        _create(
            db, settings, alice.owner_id, orca_file_id, tiny_model_dir, params={"from_checkpoint": job.id}
        )
    assert early.value.param == "from_checkpoint" and "no output or checkpoint" in early.value.message
    with db.session() as session:
        bob_file = file_service.create_file(
            session, bob.owner_id, blobs.stage_path(small_orca), blobs=blobs, filename="o.jsonl"
        )
    with pytest.raises(NotFoundError) as foreign:
        _create(
            db, settings, bob.owner_id, bob_file.id, tiny_model_dir, params={"from_checkpoint": f"{job.id}:2"}
        )
    assert foreign.value.param == "from_checkpoint" and "not found" in foreign.value.message
    with pytest.raises(Exception) as path_ref:  # a server path is not accepted from API users
        _create(
            db, settings, alice.owner_id, orca_file_id, tiny_model_dir, params={"from_checkpoint": "/etc"}
        )
    assert getattr(path_ref.value, "param", None) == "from_checkpoint"


def test_the_runner_gets_the_clear_wandb_key_and_a_wrong_secret_key_is_refused(
    db: Database, settings: Settings, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    from preftune.errors import PreftuneError
    from preftune.service.runs import claim_job
    from preftune.service.secrets import decrypt_secret

    job = _create(
        db, settings, alice.owner_id, orca_file_id, tiny_model_dir, params={"wandb_api_key": "secret-wandb"}
    )
    assert (settings.home / "secret.key").stat().st_mode & 0o777 == 0o600
    with db.session() as session:
        claimed = claim_job(session, "runner-1", settings, BlobStore(settings.blobs_dir))
    assert claimed is not None and claimed.job_id == job.id
    assert claimed.spec["wandb_api_key"] == "secret-wandb"
    other = settings.model_copy(update={"secret_key": "x" * 43 + "="})
    with pytest.raises(PreftuneError, match="PREFTUNE_SECRET_KEY"):
        decrypt_secret(other, str(job.spec["wandb_api_key"]))


def test_metric_rows_come_in_step_order_for_one_split(
    db: Database, settings: Settings, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    from preftune.service.runs import claim_job, record_step

    job = _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir)
    with db.session() as session:
        claimed = claim_job(session, "runner-1", settings, BlobStore(settings.blobs_dir))
        assert claimed is not None
        for step in (2, 1):
            record_step(session, job.id, claimed.claim_token, {"step": step, "loss": 0.7 - step / 10})
        record_step(session, job.id, claimed.claim_token, {"step": 2, "split": "eval", "loss": 0.4})
        rows = job_service.list_metric_rows(session, alice.owner_id, job.id)
        assert [(r.step, r.split) for r in rows] == [(1, "train"), (2, "train")]
        assert all(r.created_at > 0 and r.id is not None for r in rows)
        evals = job_service.list_metric_rows(session, alice.owner_id, job.id, split="eval")
        assert [(r.step, r.data["loss"]) for r in evals] == [(2, 0.4)]


def test_a_retried_create_finds_the_identical_recent_job_of_its_owner_only(
    db: Database, settings: Settings, alice: Any, bob: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    job = _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, params={"dpo_beta": 0.3})

    def retried(owner: str, beta: float, within: float = job_service.RETRY_WINDOW_SECONDS) -> Job | None:
        return job_service.find_retried_job(
            session,
            owner,
            model=str(tiny_model_dir),
            training_file=orca_file_id,
            validation_file=None,
            params={"dpo_beta": beta},
            within_seconds=within,
        )

    with db.session() as session:
        found = retried(alice.owner_id, 0.3)
        assert found is not None and found.id == job.id
        # Another knob, another owner, or a create older than the window is not a retry of it.
        assert retried(alice.owner_id, 0.4) is None
        assert retried(bob.owner_id, 0.3) is None
        stale = retried(alice.owner_id, 0.3, within=-1)
        assert stale is None


def test_the_runner_names_the_wandb_run_after_the_job_unless_the_user_did(
    db: Database, settings: Settings, alice: Any, orca_file_id: str, tiny_model_dir: Path
) -> None:
    from preftune.service.runs import claim_job

    unnamed = _create(
        db,
        settings,
        alice.owner_id,
        orca_file_id,
        tiny_model_dir,
        params={"suffix": "orca", "wandb_api_key": "k"},
    )
    named = _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, params={"wandb_name": "mine"})
    blobs = BlobStore(settings.blobs_dir)
    with db.session() as session:
        first = claim_job(session, "runner-1", settings, blobs)
        second = claim_job(session, "runner-1", settings, blobs)
        stored = job_service.get_job(session, alice.owner_id, unnamed.id)
        shown = job_service.public_hyperparameters(stored)
    assert first is not None and second is not None
    by_id = {first.job_id: first.spec, second.job_id: second.spec}
    expected = f"ft:{tiny_model_dir.name}:orca:{unnamed.id}"
    assert by_id[unnamed.id]["wandb_name"] == expected
    assert by_id[named.id]["wandb_name"] == "mine"
    # The default is the runner's: what the user sent (and sees) is unchanged.
    assert shown["wandb_name"] is None


@pytest.mark.parametrize(
    ("resources", "param"),
    [
        ({"processes_per_node": 0}, "resources.processes_per_node"),
        ({"nodes": "many"}, "resources.nodes"),
        ({"gpus": 2}, "resources.gpus"),
        ({"launcher": "slurm"}, "resources.launcher"),
        ({"strategy": "zero3"}, "resources.strategy"),
        ({"nodes": 2}, "resources.nodes"),  # several machines need the ray launcher
    ],
)
def test_bad_resources_name_the_field_and_queue_nothing(
    db: Database,
    settings: Settings,
    alice: Any,
    orca_file_id: str,
    tiny_model_dir: Path,
    resources: dict[str, Any],
    param: str,
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, resources=resources)
    assert info.value.param == param
    assert _count_jobs(db) == 0
    job = _create(
        db, settings, alice.owner_id, orca_file_id, tiny_model_dir, resources={"processes_per_node": 4}
    )
    defaults = {"processes_per_node": 1, "nodes": 1, "launcher": "torchrun", "strategy": "auto"}
    assert job.resources == {**defaults, "processes_per_node": 4}
    assert _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir).resources == defaults
    on_ray = {"processes_per_node": 2, "nodes": 3, "launcher": "ray", "strategy": "fsdp"}
    assert (
        _create(db, settings, alice.owner_id, orca_file_id, tiny_model_dir, resources=on_ray).resources
        == on_ray
    )
