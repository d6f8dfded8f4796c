"""`client.files`: upload, list, retrieve, report, content and delete data files."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from preftune.client._base import HTTPTransport
from preftune.client.pagination import Page
from preftune.client.types import DeletedObject, FileObject


class _ProgressReader:
    """A binary file that reports how much of it has been read (httpx streams uploads by `read`)."""

    def __init__(self, raw: BinaryIO, on_progress: Callable[[int, int], None]) -> None:
        self.raw = raw
        self.on_progress = on_progress
        self.total = os.fstat(raw.fileno()).st_size

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.on_progress(self.raw.tell(), self.total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def fileno(self) -> int:
        return self.raw.fileno()


class Files:
    def __init__(self, transport: HTTPTransport) -> None:
        self._t = transport

    def upload(
        self,
        file: str | Path,
        *,
        purpose: str = "fine-tune",
        name: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        idempotency_key: str | None = None,
    ) -> FileObject:
        """Upload a local file (streamed from disk) and return it validated: `status` is `processed` or
        `error`, and `report_summary` says why. `on_progress(bytes_sent, bytes_total)` follows the upload.
        Retries reuse one `Idempotency-Key`, so a retried upload never makes a second file (pass your own
        key to make an upload safe across processes; the same key with other content is a `ConflictError`)."""
        path = Path(file).expanduser()
        if not path.is_file():
            from preftune.errors import InvalidRequestError

            raise InvalidRequestError(f"no such file: {path}", param="file")
        data: dict[str, Any] = {"purpose": purpose}
        if name is not None:
            data["name"] = name
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        with path.open("rb") as raw:
            handle: BinaryIO = _ProgressReader(raw, on_progress) if on_progress else raw  # type: ignore[assignment]
            body = self._t.request(
                "POST",
                "/files",
                files={"file": (path.name, handle, content_type)},
                data=data,
                headers=headers,
            )
        return FileObject.model_validate(body)

    def list(self, *, limit: int | None = None, after: str | None = None) -> Page[FileObject]:
        """Your files, newest first. Iterate the page to walk every later page too."""
        body = self._t.request("GET", "/files", params={"limit": limit, "after": after})
        return Page(
            [FileObject.model_validate(item) for item in body["data"]],
            bool(body.get("has_more")),
            lambda cursor: self.list(limit=limit, after=cursor),
        )

    def retrieve(self, file_id: str) -> FileObject:
        return FileObject.model_validate(self._t.request("GET", f"/files/{file_id}"))

    def report(self, file_id: str) -> dict[str, Any]:
        """The full validation report: counts, per-line errors (line, field, message), warnings, token stats."""
        body: dict[str, Any] = self._t.request("GET", f"/files/{file_id}/report")
        return body

    def content(self, file_id: str) -> bytes:
        """The file's bytes exactly as uploaded."""
        with self._t.stream(f"/files/{file_id}/content") as response:
            return response.read()

    def download(self, file_id: str, path: str | Path) -> Path:
        """Stream the file's content to `path` without holding it in memory."""
        target = Path(path).expanduser()
        with self._t.stream(f"/files/{file_id}/content") as response, target.open("wb") as out:
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
        return target

    def delete(self, file_id: str) -> DeletedObject:
        return DeletedObject.model_validate(self._t.request("DELETE", f"/files/{file_id}"))
