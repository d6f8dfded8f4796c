"""Read the records of a source file for conversion: JSON Lines (plain or gzip) or one JSON array.

Public data sets come both ways (LLaMA-Factory and torchtune ship JSON arrays, HH-RLHF gzip JSON
Lines). Each record comes with its 1-based position: the line for JSON Lines, the index for arrays.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from preftune.data import reader


@dataclass(frozen=True)
class Record:
    position: int  # 1-based line (JSON Lines) or array index (JSON array)
    value: Any  # the decoded JSON, or None when `error` says why it could not be decoded
    error: str | None = None


class SourceError(Exception):
    """The source file as a whole cannot be read (not JSON, not an array of objects, unreadable)."""


def _first_char(path: Path) -> bytes:
    with reader.open_lines(path) as (stream, _raw):
        while chunk := stream.read(4096):
            stripped = chunk.lstrip().removeprefix(reader.BOM).lstrip()
            if stripped:
                return stripped[:1]
    return b""


def unit(path: Path) -> str:
    """How positions in this file are named in messages: "line" or "record"."""
    return "record" if is_array(path) else "line"


def _read_array(path: Path) -> list[Any] | None:
    """The file's records if it is one JSON array; None if it is JSON Lines whose first line is an array."""
    with reader.open_lines(path) as (stream, _raw):
        data = stream.read().removeprefix(reader.BOM)
    try:
        items = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        first_line = data.lstrip().split(b"\n", 1)[0]
        try:
            msgspec.json.decode(first_line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise SourceError(f"{path.name} starts like a JSON array but is not valid JSON: {exc}") from exc
        return None  # JSON Lines that happen to start with an array: each line is reported on its own
    if not isinstance(items, list):  # pragma: no cover - a value starting with "[" is a list
        raise SourceError(f"{path.name} must be a JSON array of records or JSON Lines")
    return items


def is_array(path: Path) -> bool:
    return _first_char(path) == b"[" and _read_array(path) is not None


def iter_records(path: Path, progress: reader.ProgressCallback | None = None) -> Iterator[Record]:
    total = path.stat().st_size
    # A JSON array has to be decoded whole; the public ones are small.
    items = _read_array(path) if _first_char(path) == b"[" else None
    if items is not None:
        if progress is not None:
            progress(total, total)
        for i, item in enumerate(items, 1):
            yield Record(i, item)
        return
    with reader.open_lines(path) as (stream, raw):
        for lineno, line in reader.iter_lines(stream, raw, progress, total):
            if line is None:
                yield Record(lineno, None, "the line is too long to be one record")
                continue
            if not line.strip():
                continue
            try:
                yield Record(lineno, msgspec.json.decode(line))
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                yield Record(lineno, None, f"not valid JSON ({exc})")
