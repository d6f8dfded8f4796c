"""The Fireworks dialect: `/v1/accounts/{account_id}/...` as `fireworks-ai==1.2.30` calls it.

The account is bound to the API key: `account_id` is the key's owner id (`preftune keys list`
shows it); any other account is a 404. Datasets are preftune files with a name (the dataset id);
a DPO job is a preftune job (`accounts/A/dpoJobs/<hex>` is `ftjob-<hex>`), its output model
`accounts/A/models/ft-<hex>` is the job's fine-tuned model. Deployments and chat are in
`fireworks/serving.py` (they need the inference engine).

Datasets for this dialect follow Fireworks' rules on top of preftune's own validation: 3 to
3,000,000 preference examples, each a one-turn conversation (an optional system message and one
user message in `input.messages`, one assistant message in each of `preferred_output` and
`non_preferred_output`), roles system/user/assistant only. (The native routes keep multi-turn.)
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from preftune.api.deps import BlobsDep, CallerDep, DatabaseDep, SessionDep, SettingsDep
from preftune.api.dialects.fireworks import schemas as fw
from preftune.api.dialects.native.presenters import public_hyperparameters
from preftune.api.dialects.retries import RetryCount, create_job_once
from preftune.api.dialects.states import fireworks_status
from preftune.api.pagination import every_page
from preftune.contracts.spec import TrainingSpec
from preftune.errors import DataValidationError, InvalidRequestError, NotFoundError, PayloadTooLargeError
from preftune.service import datasets as dataset_service
from preftune.service import files as file_service
from preftune.service import jobs as job_service
from preftune.service import uploads as upload_service
from preftune.service.keys import Caller
from preftune.store import models

router = APIRouter(tags=["fireworks"])
_READ_PAGE = 1000
JOB_PREFIX = "ftjob-"
MODEL_PREFIX = "ft-"


def account_caller(
    caller: CallerDep, account_id: str = Path(description="Your account: the API key's owner id.")
) -> Caller:
    if account_id != caller.owner_id:
        raise NotFoundError(
            f"account {account_id!r} not found (your account is your API key's owner id)", param="account_id"
        )
    return caller


AccountDep = Annotated[Caller, Depends(account_caller)]


def iso(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC).isoformat().replace("+00:00", "Z")


# --- datasets ---------------------------------------------------------------------------------
def check_rows(path: FilePath) -> int:
    """Fireworks' dataset rules (module docstring); the number of examples, or a 400 naming the line."""
    count = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            count += 1
            if count > fw.MAX_EXAMPLES:
                raise DataValidationError(
                    f"the dataset has more than {fw.MAX_EXAMPLES} examples", param="file"
                )
            try:
                row = json.loads(raw)
                prompt = row["input"]["messages"]
                chosen, rejected = row["preferred_output"], row["non_preferred_output"]
            except (ValueError, KeyError, TypeError):
                raise DataValidationError(
                    f"line {line_no}: not a preference example (input.messages, preferred_output, "
                    "non_preferred_output)",
                    param="file",
                    code="invalid_example",
                ) from None
            roles = [m.get("role") for m in prompt if isinstance(m, dict)]
            if roles not in (["user"], ["system", "user"]):
                raise DataValidationError(
                    f"line {line_no}: input.messages must be one user message (after an optional system message) "
                    f"for this API (got roles {roles}); multi-turn data trains through the native /v1/files routes",
                    param="file",
                    code="not_one_turn",
                )
            for field, answer in (("preferred_output", chosen), ("non_preferred_output", rejected)):
                if not (
                    isinstance(answer, list) and len(answer) == 1 and answer[0].get("role") == "assistant"
                ):
                    raise DataValidationError(
                        f"line {line_no}: {field} must be exactly one assistant message",
                        param="file",
                        code="not_one_turn",
                    )
    if count < fw.MIN_EXAMPLES:
        raise DataValidationError(
            f"the dataset has {count} examples; Fireworks datasets need at least {fw.MIN_EXAMPLES}",
            param="file",
            code="too_few_examples",
        )
    return count


def dataset_object(account: str, name: str, row: models.File | None, record: Any) -> fw.Dataset:
    created = record.created_at if record is not None else (row.created_at if row is not None else 0.0)
    ready = row is not None and (record is None or record.ready)
    count = row.n_examples if row is not None else (record.example_count if record is not None else None)
    return fw.Dataset(
        name=f"accounts/{account}/datasets/{name}",
        displayName=(record.display_name if record is not None else None) or name,
        createTime=iso(created) or "",
        updateTime=iso(row.created_at if row is not None else created) or "",
        state="READY" if ready else "UPLOADING",
        exampleCount=str(count) if count is not None else None,
    )


def _dataset(session: Session, caller: Caller, dataset_id: str) -> fw.Dataset:
    record = dataset_service.pending(session, caller.owner_id, dataset_id)
    row = dataset_service.file_of(session, caller.owner_id, dataset_id)
    if record is None and row is None:
        raise NotFoundError(f"dataset {dataset_id!r} not found", param="dataset_id")
    return dataset_object(caller.owner_id, dataset_id, row, record)


@router.post(
    "/accounts/{account_id}/datasets", response_model=fw.Dataset, summary="Create a dataset (Fireworks)"
)
def create_dataset(
    *, body: fw.DatasetCreate, caller: AccountDep, session: SessionDep, settings: SettingsDep
) -> fw.Dataset:
    """Announces the dataset (`state: UPLOADING`); its bytes come with `:upload` or `:getUploadEndpoint`."""
    fw.check_resource_id(body.datasetId, "datasetId")
    if body.sourceDatasetId:
        raise InvalidRequestError(
            "sourceDatasetId: copying datasets is not supported", param="sourceDatasetId"
        )
    count = body.dataset.exampleCount
    record = dataset_service.announce(
        session,
        caller.owner_id,
        body.datasetId,
        display_name=body.dataset.displayName,
        example_count=int(count) if count not in (None, "") else None,
    )
    return dataset_object(caller.owner_id, body.datasetId, None, record)


@router.get(
    "/accounts/{account_id}/datasets", response_model=fw.DatasetList, summary="List datasets (Fireworks)"
)
def list_datasets(
    *,
    caller: AccountDep,
    session: SessionDep,
    settings: SettingsDep,
    pageSize: int = Query(200, ge=1, le=1000),
    pageToken: str | None = Query(None),
) -> fw.DatasetList:
    found: dict[str, fw.Dataset] = {}
    for row in every_page(
        lambda after: file_service.list_files(session, caller.owner_id, limit=_READ_PAGE, after=after)
    ):
        if row.name:
            found[row.name] = dataset_object(caller.owner_id, row.name, row, None)
    for record in dataset_service.list_pending(session, caller.owner_id):
        uploaded = dataset_service.file_of(session, caller.owner_id, record.name)
        found[record.name] = dataset_object(caller.owner_id, record.name, uploaded, record)
    items = sorted(found.values(), key=lambda d: d.name)
    start = int(pageToken) if pageToken and pageToken.isdigit() else 0
    page_items = items[start : start + pageSize]
    more = start + pageSize < len(items)
    return fw.DatasetList(
        datasets=page_items, nextPageToken=str(start + pageSize) if more else "", totalSize=len(items)
    )


@router.get(
    "/accounts/{account_id}/datasets/{dataset_id}", response_model=fw.Dataset, summary="Get a dataset"
)
def get_dataset(*, dataset_id: str, caller: AccountDep, session: SessionDep) -> fw.Dataset:
    return _dataset(session, caller, dataset_id)


@router.delete(
    "/accounts/{account_id}/datasets/{dataset_id}", response_model=fw.Empty, summary="Delete a dataset"
)
def delete_dataset(*, dataset_id: str, caller: AccountDep, session: SessionDep, blobs: BlobsDep) -> fw.Empty:
    _dataset(session, caller, dataset_id)
    row = dataset_service.file_of(session, caller.owner_id, dataset_id)
    if row is not None:
        file_service.delete_file(session, caller.owner_id, row.id, blobs)
    dataset_service.forget(session, caller.owner_id, dataset_id)
    return fw.Empty()


def _awaiting(session: Session, caller: Caller, dataset_id: str) -> Any:
    record = dataset_service.pending(session, caller.owner_id, dataset_id)
    if record is None or record.ready:
        raise NotFoundError(
            f"dataset {dataset_id!r} is not awaiting an upload (create it first, or it is READY)",
            param="dataset_id",
        )
    return record


@router.post(
    "/accounts/{account_id}/datasets/{dataset_id}:upload",
    response_model=fw.DatasetUploaded,
    responses={413: {"description": "Over the upload limit"}},
    summary="Upload a dataset's file in one request (Fireworks)",
)
async def upload_dataset(
    *,
    dataset_id: str,
    file: UploadFile = File(description="The dataset's JSONL file."),
    caller: AccountDep,
    settings: SettingsDep,
    db: DatabaseDep,
    blobs: BlobsDep,
) -> fw.DatasetUploaded:
    """Checked against Fireworks' rules and preftune's validation; the dataset is READY after it."""
    with db.session() as session:
        _awaiting(session, caller, dataset_id)
    await file.seek(0)
    blob = await run_in_threadpool(blobs.stage_file, file.file, max_bytes=settings.max_upload_bytes)

    def record() -> fw.DatasetUploaded:
        check_rows(blob.path)
        with db.session() as session:
            row = file_service.create_file(
                session,
                caller.owner_id,
                blob,
                blobs=blobs,
                filename=file.filename or f"{dataset_id}.jsonl",
                name=dataset_id,
            )
            if row.status != "processed":
                file_service.delete_file(session, caller.owner_id, row.id, blobs)
                raise DataValidationError(f"the dataset is not valid: {row.status_details}", param="file")
            dataset_service.mark_ready(session, caller.owner_id, dataset_id)
        return fw.DatasetUploaded(
            id=dataset_id, bytes=row.bytes, created_at=int(row.created_at), filename=row.filename
        )

    try:
        return await run_in_threadpool(record)
    finally:
        blobs.discard(blob)


@router.post(
    "/accounts/{account_id}/datasets/{dataset_id}:getUploadEndpoint",
    response_model=fw.UploadEndpoint,
    summary="Signed URLs to PUT a dataset's file to (Fireworks' large-file path)",
)
def get_upload_endpoint(
    *,
    request: Request,
    dataset_id: str,
    body: fw.UploadEndpointRequest,
    caller: AccountDep,
    session: SessionDep,
    settings: SettingsDep,
) -> fw.UploadEndpoint:
    """One file per dataset here (several shards are a 400). The URL is the same presigned grant as
    Together's upload (`docs/together.md`): signed, expiring, single-use, sized to the declared size."""
    _awaiting(session, caller, dataset_id)
    if len(body.filenameToSize) != 1:
        raise InvalidRequestError(
            "filenameToSize: preftune stores a dataset as one file; concatenate the shards",
            param="filenameToSize",
        )
    ((filename, size),) = body.filenameToSize.items()
    declared = int(size)
    if declared > settings.max_upload_bytes:
        raise PayloadTooLargeError(
            f"{filename} is larger than the server's limit of {settings.max_upload_bytes} bytes",
            param="filenameToSize",
        )
    _, token = upload_service.issue_grant(
        session, settings, caller.owner_id, filename=filename, max_bytes=declared, name=dataset_id
    )
    return fw.UploadEndpoint(
        filenameToSignedUrls={filename: str(request.url_for("put_upload", upload_token=token))}
    )


@router.post(
    "/accounts/{account_id}/datasets/{dataset_id}:validateUpload",
    response_model=fw.Empty,
    summary="Finish a large-file upload: check the rows, the dataset becomes READY (Fireworks)",
)
def validate_upload(
    *, dataset_id: str, caller: AccountDep, session: SessionDep, settings: SettingsDep, blobs: BlobsDep
) -> fw.Empty:
    _awaiting(session, caller, dataset_id)
    row = dataset_service.file_of(session, caller.owner_id, dataset_id)
    if row is None:
        raise InvalidRequestError(f"dataset {dataset_id!r} has no uploaded file yet", param="dataset_id")
    try:
        if row.status != "processed":
            raise DataValidationError(f"the dataset is not valid: {row.status_details}", param="file")
        check_rows(file_service.content_path(session, caller.owner_id, row.id, blobs))
    except DataValidationError:
        # Refused: the bytes go, the dataset waits for a new upload.
        file_service.delete_file(session, caller.owner_id, row.id, blobs)
        raise
    dataset_service.mark_ready(session, caller.owner_id, dataset_id)
    return fw.Empty()


# --- DPO jobs ---------------------------------------------------------------------------------
def model_id(job_id: str) -> str:
    return MODEL_PREFIX + job_id.removeprefix(JOB_PREFIX)


def job_of_model(model: str) -> str:
    return JOB_PREFIX + model.removeprefix(MODEL_PREFIX)


def service_job_id(dpo_job_id: str) -> str:
    return dpo_job_id if dpo_job_id.startswith(JOB_PREFIX) else JOB_PREFIX + dpo_job_id


def dpo_job_object(account: str, row: models.Job, dataset: str | None) -> fw.DpoJob:
    spec = {
        **{k: f.default for k, f in TrainingSpec.model_fields.items()},
        **public_hyperparameters(row.spec),
    }
    public_id = row.id.removeprefix(JOB_PREFIX)
    failed = row.status in ("error", "user_error")
    stamps = [t for t in (row.created_at, row.started_at, row.heartbeat_at, row.finished_at) if t is not None]
    return fw.DpoJob(
        name=f"accounts/{account}/dpoJobs/{public_id}",
        displayName=spec.get("suffix") or public_id,
        dataset=f"accounts/{account}/datasets/{dataset or row.training_file_id}",
        state=fireworks_status(row.status),
        status=fw.Status(code="INVALID_ARGUMENT" if failed else "OK", message=row.error_message or ""),
        createTime=iso(row.created_at) or "",
        updateTime=iso(max(stamps)) or "",
        completedTime=iso(row.finished_at),
        createdBy=row.owner_id,
        trainingConfig=fw.TrainingConfigOut(
            baseModel=row.model,
            epochs=int(spec["n_epochs"]),
            learningRate=float(spec["learning_rate"]),
            loraRank=int(spec["lora_r"]),
            maxContextLength=int(spec["max_length"]),
            batchSizeSamples=int(spec["batch_size"]),
            gradientAccumulationSteps=int(spec["gradient_accumulation_steps"]),
            optimizerWeightDecay=float(spec["weight_decay"]),
            outputModel=f"accounts/{account}/models/{model_id(row.id)}",
        ),
        lossConfig={"method": "DPO", "dpo": {"beta": spec.get("dpo_beta")}},
    )


def _dataset_name(session: SessionDep, owner_id: str, file_id: str) -> str | None:
    try:
        return file_service.get_file(session, owner_id, file_id).name
    except NotFoundError:
        return None


@router.post(
    "/accounts/{account_id}/dpoJobs",
    response_model=fw.DpoJob,
    responses={404: {"description": "The dataset or base model is not found"}},
    summary="Create a DPO job (Fireworks)",
)
def create_dpo_job(
    *,
    body: fw.DpoJobCreate,
    dpoJobId: str | None = Query(None, description="Not supported: preftune chooses job ids."),
    retry: RetryCount,
    caller: AccountDep,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
) -> fw.DpoJob:
    if dpoJobId:
        raise InvalidRequestError("dpoJobId: preftune chooses job ids; omit it", param="dpoJobId")
    params = body.spec_params()
    dataset = fw.last_segment(body.dataset, "datasets", "dataset")
    if dataset_service.is_pending(session, caller.owner_id, dataset):
        raise InvalidRequestError(
            f"dataset {dataset!r} is not READY yet: upload its file first", param="dataset"
        )
    config = body.trainingConfig
    model = config.baseModel
    if config.warmStartFrom:
        # Continue from a fine-tuned model: preftune trains on from its weights, on its base model.
        tuned = fw.last_segment(config.warmStartFrom, "models", "trainingConfig.warmStartFrom")
        source = job_service.get_job(session, caller.owner_id, job_of_model(tuned))
        if source.output_name is None:
            raise InvalidRequestError(
                f"{config.warmStartFrom} has no output yet", param="trainingConfig.warmStartFrom"
            )
        model = source.output_name
    if not model:
        raise InvalidRequestError("trainingConfig.baseModel is required", param="trainingConfig.baseModel")
    if body.displayName:
        # Free text in Fireworks; the model name's suffix keeps its letters, digits, '-' and '_'.
        suffix = re.sub(r"[^a-zA-Z0-9_-]+", "-", body.displayName).strip("-")[:40]
        if suffix:
            params.setdefault("suffix", suffix)
    row = create_job_once(
        session,
        caller,
        settings=settings,
        retry=retry,
        model=model,
        training_file=dataset,
        validation_file=None,
        params=params,
        blobs=blobs,
    )
    return dpo_job_object(caller.owner_id, row, dataset)


@router.get(
    "/accounts/{account_id}/dpoJobs", response_model=fw.DpoJobList, summary="List DPO jobs (Fireworks)"
)
def list_dpo_jobs(
    *,
    caller: AccountDep,
    session: SessionDep,
    pageSize: int = Query(200, ge=1, le=1000),
    pageToken: str | None = Query(None),
) -> fw.DpoJobList:
    after = service_job_id(pageToken) if pageToken else None
    page = job_service.list_jobs(session, caller.owner_id, limit=pageSize, after=after)
    jobs = [
        dpo_job_object(caller.owner_id, r, _dataset_name(session, caller.owner_id, r.training_file_id))
        for r in page.data
    ]
    last = page.last_id
    return fw.DpoJobList(
        dpoJobs=jobs,
        nextPageToken=last.removeprefix(JOB_PREFIX) if page.has_more and last else "",
        totalSize=len(jobs),
    )


@router.get("/accounts/{account_id}/dpoJobs/{dpo_job_id}", response_model=fw.DpoJob, summary="Get a DPO job")
def get_dpo_job(*, dpo_job_id: str, caller: AccountDep, session: SessionDep) -> fw.DpoJob:
    row = job_service.get_job(session, caller.owner_id, service_job_id(dpo_job_id))
    return dpo_job_object(caller.owner_id, row, _dataset_name(session, caller.owner_id, row.training_file_id))


@router.post(
    "/accounts/{account_id}/dpoJobs/{dpo_job_id}:cancel", response_model=fw.DpoJob, summary="Cancel a DPO job"
)
def cancel_dpo_job(*, dpo_job_id: str, caller: AccountDep, session: SessionDep) -> fw.DpoJob:
    row = job_service.cancel_job(session, caller.owner_id, service_job_id(dpo_job_id))
    return dpo_job_object(caller.owner_id, row, _dataset_name(session, caller.owner_id, row.training_file_id))


@router.delete(
    "/accounts/{account_id}/dpoJobs/{dpo_job_id}",
    response_model=fw.Empty,
    responses={409: {"description": "The job has not finished"}},
    summary="Delete a DPO job (Fireworks)",
)
def delete_dpo_job(*, dpo_job_id: str, caller: AccountDep, session: SessionDep) -> fw.Empty:
    """preftune keeps finished jobs (their models stay servable): deleting one is accepted and
    changes nothing; an unfinished job is cancelled first."""
    row = job_service.get_job(session, caller.owner_id, service_job_id(dpo_job_id))
    if row.status in ("pending", "queued", "running"):
        job_service.cancel_job(session, caller.owner_id, row.id)
    return fw.Empty()


# --- models -----------------------------------------------------------------------------------
def model_object(account: str, row: models.Job) -> fw.Model:
    return fw.Model(
        name=f"accounts/{account}/models/{model_id(row.id)}",
        displayName=row.output_name or model_id(row.id),
        kind="HF_PEFT_ADDON",
        createTime=iso(row.finished_at) or "",
        baseModelDetails={"checkpointFormat": "HUGGINGFACE"},
        peftDetails={"baseModel": row.model, "r": int(public_hyperparameters(row.spec).get("lora_r") or 0)},
    )


def tuned_job(session: SessionDep, owner_id: str, model: str) -> models.Job:
    """`ft-<hex>` (a DPO job's output model) -> the completed job."""
    if not model.startswith(MODEL_PREFIX):
        raise NotFoundError(f"model {model!r} not found", param="model_id")
    row = job_service.get_job(session, owner_id, job_of_model(model))
    if row.status != "completed" or row.output_name is None:
        raise NotFoundError(f"model {model!r} is not ready (its job is {row.status})", param="model_id")
    return row


@router.get(
    "/accounts/{account_id}/models/{model_id}", response_model=fw.Model, summary="Get a model (Fireworks)"
)
def get_model(*, model_id: str, caller: AccountDep, session: SessionDep) -> fw.Model:
    return model_object(caller.owner_id, tuned_job(session, caller.owner_id, model_id))


@router.get("/accounts/{account_id}/models", response_model=fw.ModelList, summary="List models (Fireworks)")
def list_models(*, caller: AccountDep, session: SessionDep) -> fw.ModelList:
    done = job_service.list_jobs(session, caller.owner_id, limit=_READ_PAGE, status="completed").data
    found = [model_object(caller.owner_id, row) for row in done if row.output_name]
    return fw.ModelList(models=found, totalSize=len(found))


def fine_tuned_name(session: SessionDep, owner_id: str, model: str) -> str:
    """A Fireworks model name (`accounts/A/models/ft-<hex>`, with an optional `#deployment`) -> the
    preftune model name (`ft:<base>:<suffix>:<job>`); anything else is passed through."""
    base = model.split("#", 1)[0]
    parts = base.split("/")
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == "models":
        if parts[1] != owner_id:
            raise NotFoundError(f"model {model!r} not found", param="model")
        return tuned_job(session, owner_id, parts[3]).output_name or ""
    return model
