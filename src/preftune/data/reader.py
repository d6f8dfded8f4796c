"""Read a data file line by line as bytes: plain or gzip (detected by its magic bytes), bounded lines.

Memory stays flat whatever the file size: one line at a time, and a line longer than
`MAX_LINE_BYTES` is skipped over in chunks rather than loaded.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
MAX_LINE_BYTES = 64 * 1024 * 1024
READ_BUFFER = 1024 * 1024
# Errors a damaged gzip stream raises part-way through; callers report them with the line reached.
GZIP_ERRORS: tuple[type[Exception], ...] = (gzip.BadGzipFile, EOFError, zlib.error)

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(bytes_read, bytes_total)`; for gzip files both count compressed bytes."""


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


@contextmanager
def open_lines(path: Path) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
    """Open `path` for line reading: yields (stream of decompressed bytes, the raw file for progress)."""
    raw = io.BufferedReader(io.FileIO(path, "rb"), READ_BUFFER)
    try:
        if raw.peek(2)[:2] == GZIP_MAGIC:
            stream: IO[bytes] = io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), READ_BUFFER)  # type: ignore[arg-type]
        else:
            stream = raw
        yield stream, raw
    finally:
        raw.close()


def skip_rest_of_line(stream: IO[bytes]) -> None:
    """After a line cut at `MAX_LINE_BYTES`, read (in bounded chunks) up to the next newline."""
    while rest := stream.readline(MAX_LINE_BYTES):
        if rest.endswith(b"\n"):
            return


def iter_lines(
    stream: IO[bytes], raw: IO[bytes] | None = None, progress: ProgressCallback | None = None, total: int = 0
) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line bytes) for each line; None for a line over `MAX_LINE_BYTES` (skipped)."""
    readline = stream.readline
    lineno = 0
    while True:
        line = readline(MAX_LINE_BYTES)
        if not line:
            break
        lineno += 1
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            skip_rest_of_line(stream)
            yield lineno, None
            continue
        if progress is not None and raw is not None and not lineno & 0x3FFF:
            progress(raw.tell(), total)
        yield lineno, line
    if progress is not None and raw is not None:
        progress(total, total)
