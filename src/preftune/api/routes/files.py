"""`/v1/files`: upload (streamed to the blob store, then validated), list, retrieve, report,
content and delete. The same routes serve the `openai` client's `files.*` calls."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from preftune.api import presenters, schemas
from preftune.api.byte_ranges import stream_blob
from preftune.api.deps import get_blobs, get_database, get_db, get_owner, get_settings
from preftune.config import Settings
from preftune.contracts.spec import TrainingSpec
from preftune.errors import PayloadTooLargeError
from preftune.service import files as file_service
from preftune.service.keys import Caller
from preftune.store.blobs import BlobStore
from preftune.store.db import Database

router = APIRouter(tags=["files"])

# Multipart framing around the file (boundaries, part headers, the small form fields).
MULTIPART_OVERHEAD = 64 * 1024


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the file is larger than the server's limit of {limit} bytes; split it or raise "
        "PREFTUNE_MAX_UPLOAD_BYTES on the server",
        param="file",
        code="file_too_large",
    )


@router.post(
    "/files",
    response_model=schemas.FileObject,
    responses={
        409: {"description": "The dataset name is taken, or the Idempotency-Key was used for another upload"},
        413: {"description": "Over the upload limit"},
    },
    summary="Upload and validate a data file",
)
async def upload_file(
    request: Request,
    file: UploadFile = File(description="A JSONL data file (preference or SFT format)."),
    purpose: Literal["fine-tune"] = Form("fine-tune", description="Only fine-tune is supported."),
    name: str | None = Form(
        None, pattern=schemas.RESOURCE_NAME_PATTERN, description="Optional dataset name, e.g. orca-pairs-v2."
    ),
    idempotency_key: str | None = Header(
        None,
        alias="Idempotency-Key",
        max_length=255,
        description="Repeat an upload safely: the same key (per owner) with the same file returns the first "
        "file object instead of a new one; with a different file it is a 409.",
    ),
    caller: Caller = Depends(get_owner),
    settings: Settings = Depends(get_settings),
    db: Database = Depends(get_database),
    blobs: BlobStore = Depends(get_blobs),
) -> schemas.FileObject:
    """The body is copied to the blob store in 1 MiB chunks (never held whole in memory) and
    validated; `status` is `processed` or `error`, with the report's summary inline."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit)

    # Starlette has spooled the part to a temporary file; copy it to the blob store in 1 MiB chunks in a
    # worker thread, so neither the copy nor its fsync blocks the event loop serving other requests.
    # Staged, not yet in place: the service places it only if it accepts the upload.
    await file.seek(0)
    blob = await run_in_threadpool(blobs.stage_file, file.file, max_bytes=limit)

    def record() -> schemas.FileObject:
        # Validation streams through the file and may take a while: off the event loop.
        with db.session() as session:
            row = file_service.create_file(
                session,
                caller.owner_id,
                blob,
                blobs=blobs,
                filename=file.filename or "upload.jsonl",
                purpose=purpose,
                name=name,
                idempotency_key=idempotency_key,
            )
            return presenters.file_object(row)

    try:
        return await run_in_threadpool(record)
    finally:
        # `create_file` disposes of the staged blob; this covers a request cancelled before it ran.
        blobs.discard(blob)


@router.get("/files", response_model=schemas.ListResponse[schemas.FileObject], summary="List your files")
def list_files(
    limit: int = Query(20, ge=1, le=1000, description="Files per page."),
    after: str | None = Query(None, description="Cursor: the last file id of the previous page."),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
) -> schemas.ListResponse[schemas.FileObject]:
    page = file_service.list_files(session, caller.owner_id, limit=limit, after=after)
    data = [presenters.file_object(row) for row in page.data]
    return schemas.ListResponse[schemas.FileObject](
        data=data, has_more=page.has_more, first_id=data[0].id if data else None, last_id=page.last_id
    )


@router.get("/files/{file_id}", response_model=schemas.FileObject, summary="Retrieve a file")
def retrieve_file(
    file_id: str = Path(description="file-… id or the file's dataset name"),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
) -> schemas.FileObject:
    return presenters.file_object(file_service.get_file(session, caller.owner_id, file_id))


@router.get(
    "/files/{file_id}/report", response_model=dict[str, Any], summary="A file's full validation report"
)
def file_report(
    file_id: str = Path(description="file-… id or dataset name"),
    model: str | None = Query(
        None,
        description="Add token statistics (with histograms) using this base model's tokenizer and chat template.",
    ),
    max_length: int = Query(
        TrainingSpec.model_fields["max_length"].default,
        ge=16,
        description="With `model`: count the examples longer than this many tokens.",
    ),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
    blobs: BlobStore = Depends(get_blobs),
    settings: Settings = Depends(get_settings),
) -> dict[str, Any]:
    """Counts, every collected error (`line`, `field`, `message`), warnings and, with `model`, token statistics."""
    if model is None:
        return file_service.get_report(session, caller.owner_id, file_id)
    return file_service.report_with_token_stats(
        session,
        caller.owner_id,
        file_id,
        blobs,
        model=model,
        max_length=max_length,
        models_dir=settings.models_dir,
    )


@router.get(
    "/files/{file_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The bytes as uploaded"}},
    summary="Download a file's content",
)
def file_content(
    request: Request,
    file_id: str = Path(description="file-… id or dataset name"),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
    blobs: BlobStore = Depends(get_blobs),
) -> Response:
    """The exact bytes that were uploaded (HTTP Range supported), streamed from the blob store."""
    row = file_service.get_file(session, caller.owner_id, file_id)
    if not blobs.remote:
        path = file_service.content_path(session, caller.owner_id, file_id, blobs)
        return FileResponse(path, media_type="application/octet-stream", filename=row.filename)
    size = file_service.content_size(session, caller.owner_id, file_id, blobs)
    response: StreamingResponse | Response = stream_blob(
        blobs, row.sha256, size, request.headers.get("range"), filename=row.filename
    )
    return response


@router.delete(
    "/files/{file_id}",
    response_model=schemas.DeletedObject,
    responses={409: {"description": "An unfinished job uses the file"}},
    summary="Delete a file",
)
def delete_file(
    file_id: str = Path(description="file-… id or dataset name"),
    caller: Caller = Depends(get_owner),
    session: Session = Depends(get_db),
    blobs: BlobStore = Depends(get_blobs),
) -> schemas.DeletedObject:
    """Refused (409) while an unfinished job uses the file."""
    row = file_service.delete_file(session, caller.owner_id, file_id, blobs)
    return schemas.DeletedObject(id=row.id, object="file", deleted=True)
