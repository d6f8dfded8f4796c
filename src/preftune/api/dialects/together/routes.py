"""The Together dialect: what `together==3.1.1` (SDK and CLI) calls, onto the same service calls.

Paths Together shares with the native dialect (`/v1/files`, `/v1/fine-tunes...`) are
`DialectRoute`s: they answer Together's clients (their `User-Agent`, an `ft-` job id in the path,
or `X-Preftune-Dialect: together`) and leave every other request to the native routes. Paths
only Together has (`/v1/files/{id}/preprocess`, `/v1/files/uploads/{token}`,
`/v1/fine-tunes/models/limits`, `/v1/fine-tunes/estimate-price`, `/v1/finetune/download`) are
plain routes.

Upload is Together's handshake: `POST /v1/files` with form fields only answers 302 with
`Location` (a presigned URL, `service.uploads`) and `X-Together-File-Id`; the client PUTs the
raw bytes there without its API key, then calls `POST /v1/files/{id}/preprocess`.
"""

from __future__ import annotations

import functools
from typing import Literal

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import FileResponse, RedirectResponse
from starlette.convertors import StringConvertor, register_url_convertor

from preftune.api.archive import cached_tar
from preftune.api.deps import BlobsDep, CallerDep, IdempotencyKey, SessionDep, SettingsDep
from preftune.api.dialects.retries import RetryCount, create_job_once
from preftune.api.dialects.select import DialectRoute
from preftune.api.dialects.together import presenters
from preftune.api.dialects.together import schemas as tg
from preftune.api.pagination import every_page
from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError, NotFoundError
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.service import models as model_service
from preftune.service import uploads as upload_service

only = APIRouter(tags=["together"])


class JobIdConvertor(StringConvertor):
    """A job id (`ft-…` or `ftjob-…`), so `/fine-tunes/spec` and the like stay the native routes'."""

    regex = r"ft(?:job)?-[^/]+"


register_url_convertor("ftjob", JobIdConvertor())
# Together's versions of paths the native dialect serves too.
# Not in /openapi.json, where the native operations document these paths (docs/together.md has them).
shared = APIRouter(
    tags=["together"],
    route_class=DialectRoute.for_dialect("together", tg.TOGETHER_JOB_PREFIX),
    include_in_schema=False,
)

JOB_ID = Path(description="ft-… (a native ftjob-… id works too)")
_READ_PAGE = 1000


# --- files ------------------------------------------------------------------------------------
@shared.post(
    "/files",
    status_code=302,
    response_class=RedirectResponse,
    responses={302: {"description": "Location: the presigned upload URL; X-Together-File-Id: the file id"}},
    summary="Start an upload (Together's handshake)",
)
def start_upload(
    *,
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    purpose: Literal["fine-tune"] = Form("fine-tune"),
    file_name: str = Form(description="The file's name, e.g. pairs.jsonl."),
    file_type: Literal["jsonl"] = Form("jsonl", description="Only jsonl."),
    checksum: str | None = Form(None, description="The client's checksum of the bytes (informational)."),
) -> RedirectResponse:
    """Reserves a file id and answers with a URL to PUT the bytes to: signed, for this file only,
    at most the server's upload limit, valid once and for 15 minutes."""
    grant, token = upload_service.issue_grant(
        session, settings, caller.owner_id, filename=file_name, purpose=purpose
    )
    url = str(request.url_for("put_upload", upload_token=token))
    return RedirectResponse(url, status_code=302, headers={"X-Together-File-Id": grant.file_id})


@only.post(
    "/files/{file_id}/preprocess", response_model=tg.TogetherFile, summary="Finish an upload (Together)"
)
def preprocess_file(
    *, file_id: str = Path(description="file-…"), caller: CallerDep, session: SessionDep
) -> tg.TogetherFile:
    """The uploaded file, validated when its bytes arrived (`processing_status` COMPLETED or FAILED)."""
    return presenters.file_object(file_service.get_file(session, caller.owner_id, file_id))


@shared.get("/files", response_model=tg.TogetherFileList, summary="List files (Together)")
def list_files(*, caller: CallerDep, session: SessionDep) -> tg.TogetherFileList:
    rows = every_page(
        lambda after: file_service.list_files(session, caller.owner_id, limit=_READ_PAGE, after=after)
    )
    return tg.TogetherFileList(data=[presenters.file_object(row) for row in rows])


@shared.get("/files/{file_id}", response_model=tg.TogetherFile, summary="Retrieve a file (Together)")
def retrieve_file(
    *, file_id: str = Path(description="file-…"), caller: CallerDep, session: SessionDep
) -> tg.TogetherFile:
    return presenters.file_object(file_service.get_file(session, caller.owner_id, file_id))


@shared.delete("/files/{file_id}", response_model=tg.TogetherFileDeleted, summary="Delete a file (Together)")
def delete_file(
    *, file_id: str = Path(description="file-…"), caller: CallerDep, session: SessionDep, blobs: BlobsDep
) -> tg.TogetherFileDeleted:
    row = file_service.delete_file(session, caller.owner_id, file_id, blobs)
    return tg.TogetherFileDeleted(id=row.id)


# --- model limits and price -------------------------------------------------------------------
def _base_model(session: SessionDep, owner_id: str, name: str, settings: SettingsDep) -> str:
    """A base model, a fine-tuned model (`ft:…`) or a job (`ft-…`, for from_checkpoint) -> its base model."""
    if name.startswith((tg.TOGETHER_JOB_PREFIX, tg.NATIVE_JOB_PREFIX)):
        return job_service.get_job(session, owner_id, tg.service_job_id(name.partition(":")[0])).model
    if name.startswith(model_service.FT_PREFIX):
        return str(model_service.resolve_for_owner(session, owner_id, name).base_model_path)
    from preftune.contracts.base_models import resolve_model

    resolve_model(name, settings.models_dir)  # a 404 naming `model` when it is not on this server
    return name


@functools.cache
def _maximum(name: str) -> int:
    """A knob's upper bound from TrainingSpec's schema (built once per knob, not per request)."""
    schema = TrainingSpec.model_json_schema()["properties"][name]
    return int(schema.get("maximum", 0))


@only.get(
    "/fine-tunes/models/limits",
    response_model=tg.TogetherModelLimits,
    responses={404: {"description": "The model is not on this server (or the job is not yours)"}},
    summary="Model limits (Together)",
)
def model_limits(
    *,
    model_name: str = Query(description="A base model on this server, a fine-tuned model or an ft-… job."),
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> tg.TogetherModelLimits:
    """preftune's own bounds on the knobs (every model has the same); 0 cost, no quotas."""
    _base_model(session, caller.owner_id, model_name, settings)
    fields = TrainingSpec.model_fields
    batch = _maximum("batch_size")
    length = _maximum("max_length")
    return tg.TogetherModelLimits(
        model_name=model_name,
        default_gradient_accumulation_steps=int(fields["gradient_accumulation_steps"].default),
        lora_training=tg.LoraLimits(
            default_rank=int(fields["lora_r"].default),
            max_batch_size=batch,
            max_batch_size_dpo=batch,
            max_rank=_maximum("lora_r"),
            min_batch_size=1,
            target_modules=[
                "all-linear",
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        ),
        full_training=tg.FullLimits(max_batch_size=batch, max_batch_size_dpo=batch, min_batch_size=1),
        max_learning_rate=float(_maximum("learning_rate")),
        min_learning_rate=1e-8,
        max_num_checkpoints=_maximum("n_checkpoints"),
        max_num_epochs=_maximum("n_epochs"),
        max_num_evals=_maximum("n_evals"),
        max_seq_length_dpo=length,
        max_seq_length_sft=length,
        min_max_seq_length=int(
            TrainingSpec.model_json_schema()["properties"]["max_length"].get("minimum", 16)
        ),
    )


@only.post("/fine-tunes/estimate-price", response_model=tg.TogetherPriceEstimate, summary="Price (Together)")
def estimate_price(
    *, body: tg.TogetherPriceRequest, caller: CallerDep, session: SessionDep
) -> tg.TogetherPriceEstimate:
    """Always 0: a self-hosted server charges nothing. The files must be yours (404 otherwise)."""
    train = file_service.get_file(session, caller.owner_id, body.training_file, param="training_file")
    if body.validation_file:
        file_service.get_file(session, caller.owner_id, body.validation_file, param="validation_file")
    return tg.TogetherPriceEstimate(estimated_train_token_count=float(train.n_examples or 0))


# --- jobs -------------------------------------------------------------------------------------
@shared.post(
    "/fine-tunes",
    response_model=tg.TogetherJob,
    responses={404: {"description": "The file, model or from_checkpoint job is not found"}},
    summary="Create a job (Together's body)",
)
def create_job(
    *,
    body: tg.TogetherJobCreate,
    idempotency_key: IdempotencyKey = None,
    retry: RetryCount,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
) -> tg.TogetherJob:
    params = body.spec_params()
    model = body.model
    if not model:
        if not body.from_checkpoint:
            raise InvalidRequestError("model is required (or from_checkpoint)", param="model")
        model = _base_model(session, caller.owner_id, body.from_checkpoint, settings)
    job = create_job_once(
        session,
        caller,
        settings=settings,
        retry=retry,
        model=model,
        training_file=body.training_file,
        validation_file=body.validation_file_id(),
        params=params,
        idempotency_key=idempotency_key,
        blobs=blobs,
    )
    return presenters.job_object(job)


@shared.get("/fine-tunes", response_model=tg.TogetherJobList, summary="List jobs (Together)")
def list_jobs(*, caller: CallerDep, session: SessionDep) -> tg.TogetherJobList:
    rows = every_page(
        lambda after: job_service.list_jobs(session, caller.owner_id, limit=_READ_PAGE, after=after)
    )
    return tg.TogetherJobList(data=[presenters.job_object(row) for row in rows])


def _events(session: SessionDep, owner_id: str, job_id: str) -> list[tg.TogetherEvent]:
    rows = every_page(
        lambda after: job_service.list_events(
            session, owner_id, job_id, after=after, limit=_READ_PAGE, order="asc"
        )
    )
    return [presenters.event_object(row, job_id) for row in rows]


@shared.get("/fine-tunes/{job_id:ftjob}", response_model=tg.TogetherJob, summary="Retrieve a job (Together)")
def retrieve_job(*, job_id: str = JOB_ID, caller: CallerDep, session: SessionDep) -> tg.TogetherJob:
    row = job_service.get_job(session, caller.owner_id, tg.service_job_id(job_id))
    return presenters.job_object(row, _events(session, caller.owner_id, row.id))


@shared.post(
    "/fine-tunes/{job_id:ftjob}/cancel", response_model=tg.TogetherJob, summary="Cancel a job (Together)"
)
def cancel_job(*, job_id: str = JOB_ID, caller: CallerDep, session: SessionDep) -> tg.TogetherJob:
    return presenters.job_object(job_service.cancel_job(session, caller.owner_id, tg.service_job_id(job_id)))


@shared.get(
    "/fine-tunes/{job_id:ftjob}/events", response_model=tg.TogetherEventList, summary="Job events (Together)"
)
def list_events(*, job_id: str = JOB_ID, caller: CallerDep, session: SessionDep) -> tg.TogetherEventList:
    return tg.TogetherEventList(data=_events(session, caller.owner_id, tg.service_job_id(job_id)))


@shared.get(
    "/fine-tunes/{job_id:ftjob}/checkpoints",
    response_model=tg.TogetherCheckpointList,
    summary="Checkpoints (Together)",
)
def list_checkpoints(
    *, job_id: str = JOB_ID, caller: CallerDep, session: SessionDep
) -> tg.TogetherCheckpointList:
    job = job_service.get_job(session, caller.owner_id, tg.service_job_id(job_id))
    rows = job_service.list_checkpoints(session, caller.owner_id, job.id, order="asc")
    return tg.TogetherCheckpointList(data=presenters.checkpoints(rows, job))


@shared.get(
    "/fine-tunes/{job_id:ftjob}/metrics", response_model=tg.TogetherMetrics, summary="Metrics (Together)"
)
def list_metrics(
    *,
    job_id: str = JOB_ID,
    global_step_from: int | None = Query(None, ge=0),
    global_step_to: int | None = Query(None, ge=0),
    resolution: int | None = Query(None, ge=1, description="At most this many points, evenly spaced."),
    caller: CallerDep,
    session: SessionDep,
) -> tg.TogetherMetrics:
    after = global_step_from - 1 if global_step_from else None
    rows = job_service.list_metrics(
        session, caller.owner_id, tg.service_job_id(job_id), split="train", after_step=after
    )
    if global_step_to is not None:
        rows = [r for r in rows if int(r.get("step", 0)) <= global_step_to]
    if resolution is not None and len(rows) > resolution:
        stride = len(rows) / resolution
        rows = [rows[int(i * stride)] for i in range(resolution)]
    return presenters.metrics(rows)


@only.get(
    "/finetune/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "A tar of the artifact's files"},
        206: {"content": {"application/x-tar": {}}, "description": "The requested byte range"},
        404: {"description": "The job or checkpoint is not found"},
        409: {"description": "The job has not completed"},
    },
    summary="Download a job's adapter, merged model or a checkpoint (Together; tar, HTTP Range)",
)
def download(
    *,
    ft_id: str = Query(description="ft-… job id"),
    checkpoint: Literal["adapter", "merged", "model_output_path", "default"] = Query(
        "default", description="adapter, merged (LoRA jobs created with merge), model_output_path or default"
    ),
    checkpoint_step: int | None = Query(
        None,
        ge=0,
        description="An intermediate checkpoint's step; 0, absent or the final step: the final output",
    ),
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
) -> FileResponse:
    job = job_service.get_job(session, caller.owner_id, tg.service_job_id(ft_id))
    artifact: Literal["adapter", "model", "merged", "checkpoint"]
    artifact = {"adapter": "adapter", "merged": "merged"}.get(checkpoint, "adapter")  # type: ignore[assignment]
    step = None
    if checkpoint_step and not (job.status == "completed" and checkpoint_step == job.step):
        artifact, step = "checkpoint", checkpoint_step
    try:
        source = job_service.artifact_path(
            session, caller.owner_id, job.id, settings, artifact=artifact, step=step, blobs=blobs
        )
    except NotFoundError as exc:
        if artifact != "merged":
            raise
        raise NotFoundError(
            f"job {ft_id} has no merged model (preftune merges only jobs created with merge=true; its "
            "model limits say merge_output_lora: false): download checkpoint=adapter "
            "(CLI: --checkpoint-type adapter)",
            param="checkpoint",
        ) from exc
    name = artifact if step is None else f"checkpoint-{step}"
    tar = cached_tar(source, job_service.job_dir(settings, job.id) / "downloads", name)
    return FileResponse(
        tar, media_type="application/x-tar", filename=f"{tg.public_job_id(job.id)}-{name}.tar"
    )


# For the app, in this order: Together's versions of the shared paths, then the paths only Together has.
routers = [shared, only]
