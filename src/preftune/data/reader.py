"""Read a data file line by line as bytes: plain or gzip (detected by its magic bytes), bounded lines.

Memory stays flat whatever the file size: one line at a time, and a line longer than
`MAX_LINE_BYTES` is skipped over in chunks rather than loaded.
"""

from __future__ import annotations

import gzip
import io
import itertools
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


def iter_line_batches(
    stream: IO[bytes], raw: IO[bytes] | None = None, progress: ProgressCallback | None = None, total: int = 0
) -> Iterator[list[bytes | None]]:
    """The file's lines (without their newline) in batches of about `READ_BUFFER` bytes.

    Reading big blocks and splitting them in C is much faster than a readline call per line. A line
    longer than `MAX_LINE_BYTES` comes as None and is skipped, not held in memory. A byte-order mark
    at the start of the file is dropped.
    """
    read = stream.read
    pending: list[bytes] = []  # pieces of a line whose end has not been read yet
    pending_len = 0
    skipping = False  # inside an over-long line, reading on to its end
    # Complete lines inside one block are at most a block long; only then can they skip the length test.
    check_every_line = READ_BUFFER > MAX_LINE_BYTES
    # A byte-order mark is accepted once, at the very start of the file.
    start = read(max(READ_BUFFER, len(BOM))).removeprefix(BOM)
    for block in itertools.chain([start], iter(lambda: read(READ_BUFFER), b"")):
        if not block:
            continue
        if progress is not None and raw is not None:
            progress(raw.tell(), total)
        newline = block.find(b"\n")
        first_too_long = False
        if newline < 0:
            if not skipping:
                pending.append(block)
                pending_len += len(block)
                if pending_len > MAX_LINE_BYTES:
                    yield [None]
                    pending, pending_len, skipping = [], 0, True
            continue
        if skipping:
            block, skipping = block[newline + 1 :], False
        elif pending:
            first_too_long = pending_len + newline > MAX_LINE_BYTES
            pending.append(block)
            block = b"".join(pending)
            pending, pending_len = [], 0
        lines: list[bytes | None] = block.split(b"\n")  # type: ignore[assignment]
        if first_too_long:
            lines[0] = None
        if check_every_line:
            lines = [None if line is None or len(line) > MAX_LINE_BYTES else line for line in lines]
        last = lines.pop()
        if last:
            pending, pending_len = [last], len(last)  # type: ignore[list-item]
        yield lines
    if pending and not skipping:
        yield [b"".join(pending)]
    if progress is not None:
        progress(total, total)


def iter_lines(
    stream: IO[bytes], raw: IO[bytes] | None = None, progress: ProgressCallback | None = None, total: int = 0
) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line without its newline); None for a line over `MAX_LINE_BYTES` (skipped)."""
    lineno = 0
    for batch in iter_line_batches(stream, raw, progress, total):
        for line in batch:
            lineno += 1
            yield lineno, line
