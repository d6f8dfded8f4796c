"""Streaming validation of a data file (`validate_file`) and the trainer's reader (`iter_examples`).

Each line goes first through the typed fast path (`fast.py`); only lines it does not accept are
decoded generically and checked by `rows.py`, which names every problem. Bad content never
raises: it becomes an error in the report, with its line number and field path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from preftune.data import reader
from preftune.data.dedup import N_PARTS, DuplicateFinder
from preftune.data.fast import FAST_CHECKS
from preftune.data.rows import check_row
from preftune.data.types import (
    FORMAT_NAMES,
    MAX_EXAMPLES,
    MIN_EXAMPLES,
    Example,
    Format,
    Issue,
    PreferenceExample,
    ValidationReport,
)
from preftune.errors import DataValidationError

LONG_LINE_BYTES = 100_000
SUFFIXES = (".jsonl", ".jsonl.gz")
_generic = msgspec.json.Decoder()


def _name_problem(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(SUFFIXES) or "." not in lower.lstrip("."):
        # Names without any extension are accepted: the blob store keeps files under their sha256.
        return None
    hint = ""
    if lower.endswith(".json"):
        hint = "; a file that is one JSON array is turned into JSON Lines by `preftune data convert`"
    return f"the file name {name!r} must end in .jsonl or .jsonl.gz (one JSON object a line){hint}"


def _decode_problem(line: bytes, lineno: int, exc: Exception) -> tuple[str, str]:
    """A readable (message, code) for a line that is not JSON."""
    if line.startswith(reader.BOM):
        return (
            "the line starts with a byte-order mark (BOM); only the very start of the file may have one: "
            "remove it",
            "misplaced_bom",
        )
    try:
        # Decoded again here (not from msgspec's error) so the position counts from the line's start.
        line.decode("utf-8")
    except UnicodeDecodeError as err:
        return (
            f"the line is not valid UTF-8 (byte {err.start + 1} of the line is {line[err.start : err.start + 1]!r}); "
            "save the file as UTF-8",
            "not_utf8",
        )
    detail = str(exc).removeprefix("JSON is malformed: ")
    hint = ""
    stripped = line.strip()
    if lineno == 1 and stripped.startswith(b"["):
        return (
            "the file is one JSON array, not JSON Lines (one JSON object a line): convert it with "
            "`preftune data convert --from FORMAT IN OUT` (sharegpt, stack-exchange, trl, ultrafeedback, ...)",
            "json_array",
        )
    if stripped.startswith(b"{") and not stripped.endswith(b"}"):
        hint = "; is one object spread over several lines? Each example must be on a single line"
    return f"the line is not valid JSON ({detail}){hint}", "invalid_json"


def _whitespace_only_difference(a: str, b: str) -> bool:
    # Cheap necessary condition first (strip returns the same object when there is nothing to
    # strip): the first and last visible characters must agree before splitting whole answers.
    a_s, b_s = a.strip(), b.strip()
    if a_s[:1] != b_s[:1] or a_s[-1:] != b_s[-1:]:
        return False
    return a.split() == b.split()


def validate_file(
    path: str | os.PathLike[str],
    *,
    max_errors: int = 100,
    name: str | None = None,
    progress: reader.ProgressCallback | None = None,
) -> ValidationReport:
    """Validate a JSONL (or gzip JSONL) data file in one streaming pass; never raises for bad content.

    `name` is the user's file name when `path` is a stored blob (its extension is checked);
    `progress(bytes_read, bytes_total)` is called now and then for a progress bar. At most
    `max_errors` errors and as many warnings are listed; `n_errors_total` counts them all.
    """
    path = Path(path)
    report = ValidationReport(path=str(path), max_errors=max(0, max_errors))
    problem = _name_problem(name if name is not None else path.name)
    if problem:
        report.add_error(None, None, problem, "bad_extension")
    try:
        report.n_bytes = path.stat().st_size
        if not path.is_file():
            report.add_error(None, None, f"{path} is not a file", "not_a_file")
            return report
        _scan(path, report, progress)
    except reader.GZIP_ERRORS as exc:
        report.add_error(
            report.n_lines + 1 if report.n_lines else None,
            None,
            f"the gzip data is damaged or cut short after line {report.n_lines} ({exc}); "
            "compress the file again",
            "bad_gzip",
        )
    except OSError as exc:
        report.add_error(None, None, f"cannot read {path}: {exc.strerror or exc}", "unreadable")
    _check_count(report)
    report.errors.sort(key=lambda e: e.line or 0)
    report.warnings.sort(key=lambda w: w.line or 0)
    return report


FATAL_CODES = frozenset({"unreadable", "not_a_file", "json_array", "bad_gzip"})


def _check_count(report: ValidationReport) -> None:
    if any(e.code in FATAL_CODES for e in report.errors):
        return  # the file was not read to its end, so its count means nothing
    n = report.n_examples
    if n == 0 and report.n_lines == 0:
        report.add_error(
            None,
            None,
            "the file is empty; it must hold at least 3 examples, one JSON object a line",
            "empty_file",
        )
    elif 0 < n < MIN_EXAMPLES or (n == 0 and report.n_lines):
        report.add_error(
            None,
            None,
            f"the file holds {n} example(s); at least {MIN_EXAMPLES} are needed",
            "too_few_examples",
        )
    elif n > MAX_EXAMPLES:
        report.add_error(
            None,
            None,
            f"the file holds {n:,} examples; at most {MAX_EXAMPLES:,} are allowed: "
            "split it or sample from it",
            "too_many_examples",
        )


def _slow_check(
    line: bytes, lineno: int, state: _ScanState, report: ValidationReport
) -> tuple[str, ...] | None:
    """Decode and check a line the fast path did not accept; returns its answers when it is valid after all."""
    try:
        obj = _generic.decode(line)
    except Exception as exc:  # msgspec.DecodeError, UnicodeDecodeError, RecursionError on absurd nesting
        message, code = _decode_problem(line, lineno, exc)
        report.add_error(lineno, None, message, code)
        return None
    result = check_row(obj, lineno, state.format)
    if result.format is not None and state.format is None:
        state.format, state.format_line = result.format, lineno
    elif result.format is not None and result.format != state.format:
        report.add_error(
            lineno,
            None,
            f"this line is {FORMAT_NAMES[result.format]} but line {state.format_line} "
            f"is {FORMAT_NAMES[state.format or 'preference']}; one file holds one format",
            "mixed_formats",
        )
        return None
    for field, message, code in result.errors:
        report.add_error(lineno, field, message, code)
    example = result.example
    if result.errors or example is None:
        return None
    if isinstance(example, PreferenceExample):
        return (example.preferred["content"], example.non_preferred["content"])
    return ()


class _ScanState:
    format: Format | None = None
    format_line: int = 0


def _scan(path: Path, report: ValidationReport, progress: reader.ProgressCallback | None) -> None:
    # The hot loop: one pass, bounded lines, the typed fast path first; per-line work kept to a minimum.
    state = _ScanState()
    fast = None
    dups = DuplicateFinder()
    hashes_append, lines_append, part_appends = dups.hashes.append, dups.lines.append, dups.part_appends
    part_mask = N_PARTS - 1
    n_examples = n_valid = n_blank = lineno = 0
    limit, total = reader.MAX_LINE_BYTES, report.n_bytes
    add_warning = report.add_warning
    with reader.open_lines(path) as (stream, raw):
        try:
            for batch in reader.iter_line_batches(stream, raw, progress, total):
                for line in batch:
                    lineno += 1
                    if line is None:
                        n_examples += 1
                        report.add_error(
                            lineno,
                            None,
                            f"the line is longer than {limit // 2**20} MiB; no example can be that long",
                            "line_too_long",
                        )
                        continue
                    if not line or line.isspace():
                        n_blank += 1
                        report.add_error(
                            lineno,
                            None,
                            "the line is blank; remove it (each line must be one JSON object)",
                            "blank_line",
                        )
                        continue
                    n_examples += 1
                    answers = fast(line) if fast is not None else None
                    if answers is None:
                        answers = _slow_check(line, lineno, state, report)
                        if answers is None:
                            if lineno == 1 and report.errors and report.errors[-1].code == "json_array":
                                # Every later line of a pretty-printed array would be one more error.
                                n_examples = 0
                                break
                            continue
                        if fast is None and state.format is not None:
                            fast = FAST_CHECKS[state.format]
                    n_valid += 1
                    if answers:
                        preferred, non_preferred = answers
                        if preferred == non_preferred:
                            add_warning(
                                lineno,
                                "non_preferred_output[0].content",
                                "the preferred and "
                                "non-preferred answers are identical, so the pair teaches nothing",
                                "identical_answers",
                            )
                        # The first-character test is a cheap necessary condition for the split test.
                        elif preferred.lstrip()[:1] == non_preferred.lstrip()[
                            :1
                        ] and _whitespace_only_difference(preferred, non_preferred):
                            add_warning(
                                lineno,
                                "non_preferred_output[0].content",
                                "the answers differ only in "
                                "whitespace, so the pair teaches mostly formatting",
                                "whitespace_only_difference",
                            )
                    if len(line) > LONG_LINE_BYTES:
                        add_warning(
                            lineno,
                            None,
                            f"the line is very long ({len(line):,} bytes); it will likely "
                            "be truncated at training (see max_length)",
                            "long_line",
                        )
                    # The duplicate check, inlined from DuplicateFinder.add (this loop runs per line).
                    h = hash(line)
                    hashes_append(h)
                    lines_append(lineno)
                    part_appends[h & part_mask](h)
                else:
                    continue
                break  # the inner loop stopped early: stop reading
        finally:
            report.n_lines = lineno
            report.format = state.format
            report.n_examples = n_examples
            report.n_valid = n_valid
    n_dups = 0
    for line_no, first in dups.duplicates():
        n_dups += 1
        add_warning(line_no, None, f"this example repeats line {first}", "duplicate_example")
    report.stats = {"blank_lines": n_blank, "duplicates": n_dups}


def _raise(issue: Issue) -> None:
    raise DataValidationError(str(issue), param=issue.field, code=issue.code)


def iter_examples(path: str | os.PathLike[str]) -> Iterator[Example]:
    """The file's rows as canonical `PreferenceExample` / `SFTExample` records, in file order.

    Meant for a file that `validate_file` accepted; a row that breaks a rule raises
    `DataValidationError` naming its line and field (so a file changed after validation still
    cannot train on garbage).
    """
    path = Path(path)
    fmt: Format | None = None
    fmt_line = 0
    try:
        with reader.open_lines(path) as (stream, _raw):
            for lineno, line in reader.iter_lines(stream):
                if line is None:
                    _raise(Issue(lineno, None, "the line is too long", "line_too_long"))
                    continue
                if not line or line.isspace():
                    _raise(Issue(lineno, None, "the line is blank; remove it", "blank_line"))
                try:
                    obj = _generic.decode(line)
                except Exception as exc:
                    message, code = _decode_problem(line, lineno, exc)
                    _raise(Issue(lineno, None, message, code))
                result = check_row(obj, lineno, fmt)
                if result.format is not None and fmt is None:
                    fmt, fmt_line = result.format, lineno
                elif result.format is not None and result.format != fmt:
                    _raise(
                        Issue(
                            lineno,
                            None,
                            f"this line is {FORMAT_NAMES[result.format]} but line {fmt_line} is "
                            f"{FORMAT_NAMES[fmt or 'preference']}; one file holds one format",
                            "mixed_formats",
                        )
                    )
                if result.errors:
                    field, message, code = result.errors[0]
                    _raise(Issue(lineno, field, message, code))
                if result.example is not None:
                    yield result.example
    except reader.GZIP_ERRORS as exc:
        raise DataValidationError(f"{path}: the gzip data is damaged ({exc})", code="bad_gzip") from exc
    except OSError as exc:
        raise DataValidationError(f"cannot read {path}: {exc.strerror or exc}", code="unreadable") from exc
