"""`/v1/fine-tunes`: the native dialect's job routes (Together-style flat bodies, native states).

Thin: each route parses its input, calls `preftune.service.jobs`, and presents the rows.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse

from preftune.api.archive import cached_tar
from preftune.api.deps import BlobsDep, CallerDep, IdempotencyKey, SessionDep, SettingsDep
from preftune.api.dialects.native import presenters, schemas
from preftune.api.pagination import ListResponse, list_response
from preftune.contracts.spec import TrainingSpec
from preftune.service import jobs as job_service

router = APIRouter(tags=["fine-tunes"])


@router.get("/fine-tunes/spec", response_model=dict[str, Any], summary="Every hyperparameter, as JSON schema")
def training_spec_schema() -> dict[str, Any]:
    """`TrainingSpec`'s JSON schema: names, types, defaults, ranges, help and `group` (no auth needed)."""
    return TrainingSpec.model_json_schema()


@router.post(
    "/fine-tunes",
    response_model=schemas.FineTuneJob,
    responses={
        404: {"description": "The file, model or from_checkpoint job is not found"},
        409: {"description": "The Idempotency-Key was used for a different request"},
    },
    summary="Create a fine-tuning job",
)
def create_fine_tune(
    *,
    body: schemas.FineTuneCreate,
    idempotency_key: IdempotencyKey = None,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
) -> schemas.FineTuneJob:
    """Validates the files (processed, yours), the model (on this server) and every knob, then
    queues the job. A 4xx names the parameter at fault, and nothing is queued."""
    job = job_service.create_job(
        session,
        caller.owner_id,
        settings=settings,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        params=body.spec_params(),
        idempotency_key=idempotency_key,
        resources=body.resources.model_dump() if body.resources else None,
        blobs=blobs,
    )
    return presenters.job_object(job)


@router.get("/fine-tunes", response_model=ListResponse[schemas.FineTuneJob], summary="List your jobs")
def list_fine_tunes(
    *,
    limit: int = Query(20, ge=1, le=1000, description="Jobs per page."),
    after: str | None = Query(None, description="Cursor: the last job id of the previous page."),
    status: schemas.JobStatus | None = Query(None, description="Only jobs in this state."),
    caller: CallerDep,
    session: SessionDep,
) -> ListResponse[schemas.FineTuneJob]:
    page = job_service.list_jobs(session, caller.owner_id, limit=limit, after=after, status=status)
    return list_response([presenters.job_object(row) for row in page.data], has_more=page.has_more)


@router.get("/fine-tunes/{job_id}", response_model=schemas.FineTuneJob, summary="Retrieve a job")
def retrieve_fine_tune(
    *,
    job_id: str = Path(description="ftjob-… id"),
    caller: CallerDep,
    session: SessionDep,
) -> schemas.FineTuneJob:
    return presenters.job_object(job_service.get_job(session, caller.owner_id, job_id))


@router.post(
    "/fine-tunes/{job_id}/cancel",
    response_model=schemas.FineTuneJob,
    responses={409: {"description": "The job has already finished"}},
    summary="Cancel a job",
)
def cancel_fine_tune(
    *,
    job_id: str = Path(description="ftjob-… id"),
    caller: CallerDep,
    session: SessionDep,
) -> schemas.FineTuneJob:
    """A queued job is cancelled at once; a running one stops within seconds, keeping its last checkpoint."""
    return presenters.job_object(job_service.cancel_job(session, caller.owner_id, job_id))


@router.get(
    "/fine-tunes/{job_id}/events",
    response_model=ListResponse[schemas.JobEvent],
    summary="A job's events",
)
def list_fine_tune_events(
    *,
    job_id: str = Path(description="ftjob-… id"),
    after: str | None = Query(None, description="Only events after this event id (ftevent-N)."),
    limit: int = Query(100, ge=1, le=1000),
    caller: CallerDep,
    session: SessionDep,
) -> ListResponse[schemas.JobEvent]:
    """Oldest first, so a follower passes the last id it has seen as `after`."""
    page = job_service.list_events(session, caller.owner_id, job_id, after=after, limit=limit, order="asc")
    return list_response([presenters.event_object(row) for row in page.data], has_more=page.has_more)


@router.get(
    "/fine-tunes/{job_id}/metrics", response_model=schemas.MetricList, summary="A job's per-step metrics"
)
def list_fine_tune_metrics(
    *,
    job_id: str = Path(description="ftjob-… id"),
    after_step: int | None = Query(None, ge=0, description="Only steps after this one."),
    split: Literal["train", "eval"] | None = Query(None, description="Only training or only eval points."),
    caller: CallerDep,
    session: SessionDep,
) -> schemas.MetricList:
    rows = job_service.list_metrics(session, caller.owner_id, job_id, after_step=after_step, split=split)
    return schemas.MetricList(data=rows)


@router.get(
    "/fine-tunes/{job_id}/checkpoints",
    response_model=ListResponse[schemas.Checkpoint],
    summary="A job's checkpoints",
)
def list_fine_tune_checkpoints(
    *,
    job_id: str = Path(description="ftjob-… id"),
    caller: CallerDep,
    session: SessionDep,
) -> ListResponse[schemas.Checkpoint]:
    rows = job_service.list_checkpoints(session, caller.owner_id, job_id, order="asc")
    best_step = job_service.get_job(session, caller.owner_id, job_id).best_step
    return list_response([presenters.checkpoint_object(row, best_step) for row in rows])


@router.get(
    "/fine-tunes/{job_id}/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "A tar of the artifact's files"},
        206: {"content": {"application/x-tar": {}}, "description": "The requested byte range"},
        409: {"description": "The job has not completed (use artifact=checkpoint)"},
    },
    summary="Download the adapter, merged model or a checkpoint (tar, HTTP Range)",
)
def download_fine_tune(
    *,
    job_id: str = Path(description="ftjob-… id"),
    artifact: Literal["adapter", "model", "merged", "checkpoint", "best"] = Query(
        "adapter",
        description="adapter (PEFT; the full model for full fine-tuning), model, merged (needs merge=true), "
        "checkpoint (with step), or best (the checkpoint with the lowest validation loss).",
    ),
    step: int | None = Query(None, ge=0, description="With artifact=checkpoint: the checkpoint's step."),
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
) -> FileResponse:
    """A tar whose members are the artifact's files (`adapter_config.json`, ...), built once and cached;
    `Range: bytes=N-` resumes an interrupted download."""
    source = job_service.artifact_path(
        session, caller.owner_id, job_id, settings, artifact=artifact, step=step, blobs=blobs
    )
    if artifact == "best":
        best_step = job_service.get_job(session, caller.owner_id, job_id).best_step
        name = f"checkpoint-{best_step}"
    else:
        name = artifact if artifact != "checkpoint" else f"checkpoint-{step}"
    tar = cached_tar(source, job_service.job_dir(settings, job_id) / "downloads", name)
    return FileResponse(tar, media_type="application/x-tar", filename=f"{job_id}-{name}.tar")
