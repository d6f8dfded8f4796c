"""The presigned upload URL every dialect with an upload handshake hands out (Together's
`POST /v1/files` redirect, Fireworks' `:getUploadEndpoint`): `PUT /v1/files/uploads/{grant}` with
the raw bytes and no API key. The grant (`service.uploads`) is the credential: signed, expiring,
for one file id, size-limited and single-use. The answer is the native file object; each
dialect's own follow-up call (`/preprocess`, `:validateUpload`) presents the file its way.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool

from preftune.api.deps import BlobsDep, DatabaseDep, SettingsDep
from preftune.api.dialects.native import presenters
from preftune.api.dialects.native.schemas import FileObject
from preftune.errors import PayloadTooLargeError
from preftune.service import files as file_service
from preftune.service import uploads as upload_service

router = APIRouter(tags=["uploads"])


@router.put(
    "/files/uploads/{upload_token}",
    name="put_upload",
    response_model=FileObject,
    responses={
        401: {"description": "The URL is tampered with, expired or not an upload URL"},
        409: {"description": "The URL was used already"},
        413: {"description": "More bytes than the URL allows"},
    },
    summary="The presigned upload URL: PUT the file's bytes (no API key)",
)
async def put_upload(
    *,
    request: Request,
    upload_token: str = Path(description="The signed grant from the upload handshake."),
    settings: SettingsDep,
    db: DatabaseDep,
    blobs: BlobsDep,
) -> FileObject:
    grant = upload_service.verify_grant(settings, upload_token)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > grant.max_bytes:
        raise PayloadTooLargeError(
            f"the file is larger than this upload URL allows ({grant.max_bytes} bytes)",
            param="file",
            code="file_too_large",
        )

    def claim() -> None:
        with db.session() as session:
            upload_service.claim_grant(session, grant)

    await run_in_threadpool(claim)
    blob = await blobs.stage_async_chunks(request.stream(), max_bytes=grant.max_bytes)

    def record() -> FileObject:
        with db.session() as session:
            row = file_service.create_file(
                session,
                grant.owner_id,
                blob,
                blobs=blobs,
                filename=grant.filename,
                purpose=grant.purpose,
                file_id=grant.file_id,
                name=grant.name,
            )
            return presenters.file_object(row)

    try:
        return await run_in_threadpool(record)
    finally:
        blobs.discard(blob)
