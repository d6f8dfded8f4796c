"""HTTP `Range` over a blob that is not a local file (an S3 object): parse one range, stream it.

A local blob is served by Starlette's `FileResponse`, which does the same from the disk. A request
with several ranges gets the whole body (200), which HTTP allows; one past the end is a 416.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi.responses import Response, StreamingResponse

from preftune.store.blobs import BlobStore

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """(start, end) inclusive for one satisfiable range; None for no (or an ignored) range; False when
    the range cannot be satisfied (416)."""
    if not header:
        return None
    match = RANGE_RE.match(header.strip())
    if match is None:
        return None  # several ranges or another unit: send it all
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            return False
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return False
    return start, end


def _disposition(filename: str) -> str:
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


def stream_blob(
    blobs: BlobStore, sha256: str, size: int, range_header: str | None, *, filename: str
) -> StreamingResponse | Response:
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": _disposition(filename)}
    wanted = parse_range(range_header, size)
    if wanted is False:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if wanted is None or wanted is True:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            blobs.iter_range(sha256), media_type="application/octet-stream", headers=headers
        )
    start, end = wanted
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(
        blobs.iter_range(sha256, start, end),
        status_code=206,
        media_type="application/octet-stream",
        headers=headers,
    )
