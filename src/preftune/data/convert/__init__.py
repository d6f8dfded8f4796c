"""`preftune data convert`: other public preference formats into preftune's, and preference data into SFT data.

`convert_file(src, dst, source=..., to=...)` reads records one by one, converts each with the
source's converter, checks the result against preftune's own row rules and writes it; a record
that cannot be converted faithfully is reported (position, field, reason) and left out, so the
output always passes `preftune files check`. Output is written to a temporary file and renamed.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import msgspec

from preftune.data import reader
from preftune.data.convert import canonical, hh_rlhf, sharegpt, stack_exchange, trl, ultrafeedback
from preftune.data.convert.common import ConversionProblem, Dropped
from preftune.data.convert.records import SourceError, iter_records, unit
from preftune.data.rows import check_row
from preftune.data.types import Issue, PreferenceExample

Converter = Callable[[Any], PreferenceExample | Dropped]
SOURCES: dict[str, Converter] = {
    "preftune": canonical.convert,
    "hh-rlhf": hh_rlhf.convert,
    "trl": trl.convert,
    "sharegpt": sharegpt.convert,
    "ultrafeedback": ultrafeedback.convert,
    "stack-exchange": stack_exchange.convert,
}
Target = Literal["preference", "sft"]
TARGETS: tuple[Target, ...] = ("preference", "sft")

__all__ = ["SOURCES", "TARGETS", "ConvertReport", "SourceError", "convert_file", "to_row"]


@dataclass
class ConvertReport:
    source: str
    target: str
    unit: str = "line"  # how `Issue.line` counts: "line" (JSON Lines) or "record" (JSON array index, 1-based)
    n_read: int = 0
    n_written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    problems: list[Issue] = field(default_factory=list)
    n_problems_total: int = 0
    max_problems: int = 100

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def add_problem(self, position: int, field_path: str | None, message: str, code: str) -> None:
        self.n_problems_total += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(Issue(position, field_path, message, code))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "unit": self.unit,
            "n_read": self.n_read,
            "n_written": self.n_written,
            "n_dropped": self.n_dropped,
            "dropped": dict(self.dropped),
            "n_problems_total": self.n_problems_total,
            "problems": [p.to_dict() for p in self.problems],
        }


def to_row(example: PreferenceExample, target: Target) -> dict[str, Any]:
    """The canonical JSON row for an example: preference data, or SFT `messages` (context + preferred answer)."""
    if target == "sft":
        return {"messages": [*example.messages, example.preferred]}
    return {
        "input": {"messages": example.messages},
        "preferred_output": [example.preferred],
        "non_preferred_output": [example.non_preferred],
    }


def _open_output(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.GzipFile(path, "wb", compresslevel=6)  # type: ignore[return-value]
    return open(path, "wb", buffering=reader.READ_BUFFER)


def convert_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    source: str,
    to: Target = "preference",
    max_problems: int = 100,
    progress: reader.ProgressCallback | None = None,
) -> ConvertReport:
    """Convert `src` (format `source`, one of `SOURCES`) into `dst` (JSON Lines; gzip if it ends in .gz).

    Raises `ValueError` for an unknown source or target, `SourceError` when `src` cannot be read as
    records at all, `OSError` for file-system failures. Record-level problems go into the report.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source format {source!r}; choose one of: {', '.join(SOURCES)}")
    if to not in TARGETS:
        raise ValueError(f"unknown target {to!r}; choose preference or sft")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("the output file must differ from the input file")
    if not dst.parent.is_dir():
        raise ValueError(f"the output folder {dst.parent} does not exist; create it first")
    convert = SOURCES[source]
    report = ConvertReport(source, to, unit(src), max_problems=max_problems)
    encoder = msgspec.json.Encoder()
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        with _open_output(tmp) as out:
            for record in iter_records(src, progress):
                report.n_read += 1
                if record.error is not None:
                    report.add_problem(record.position, None, record.error, "invalid_json")
                    continue
                try:
                    converted = convert(record.value)
                except ConversionProblem as exc:
                    report.add_problem(record.position, exc.field, exc.message, exc.code)
                    continue
                if isinstance(converted, Dropped):
                    report.dropped[converted.reason] = report.dropped.get(converted.reason, 0) + 1
                    continue
                row = to_row(converted, to)
                # The output must pass `files check`: hold each converted row to the same rules.
                check = check_row(row, record.position)
                if check.errors:
                    field_path, message, code = check.errors[0]
                    report.add_problem(
                        record.position, None, f"after conversion, {field_path or 'the row'}: {message}", code
                    )
                    continue
                out.write(encoder.encode(row))
                out.write(b"\n")
                report.n_written += 1
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return report
