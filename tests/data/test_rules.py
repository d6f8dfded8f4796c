"""One broken example per validation rule: each reported on the right line, with the right field path."""

from __future__ import annotations

import copy
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from preftune.data import validate_file

Row = dict[str, Any]


def mutate(base: Row, change: Callable[[Row], None]) -> Row:
    row = copy.deepcopy(base)
    change(row)
    return row


def _set(path: str, value: Any) -> Callable[[Row], None]:
    def change(row: Row) -> None:
        *parents, last = path.split("/")
        target: Any = row
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is DELETE:
            del target[int(last) if last.isdigit() else last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return change


DELETE = object()

# (rule name, change to a valid row, expected field path, expected code)
ROW_RULES: list[tuple[str, Callable[[Row], None], str | None, str]] = [
    ("input not an object", _set("input", "hello"), "input", "not_an_object"),
    ("input missing", _set("input", DELETE), "input", "missing_field"),
    ("messages missing", _set("input/messages", DELETE), "input.messages", "missing_field"),
    ("messages not a list", _set("input/messages", {"role": "user"}), "input.messages", "not_a_list"),
    ("messages empty", _set("input/messages", []), "input.messages", "empty_list"),
    ("message not an object", _set("input/messages/1", "hi"), "input.messages[1]", "message_not_object"),
    ("bad role", _set("input/messages/1/role", "human"), "input.messages[1].role", "invalid_role"),
    ("role missing", _set("input/messages/1/role", DELETE), "input.messages[1].role", "missing_field"),
    (
        "content missing",
        _set("input/messages/1/content", DELETE),
        "input.messages[1].content",
        "missing_field",
    ),
    (
        "content not a string",
        _set("input/messages/1/content", ["a"]),
        "input.messages[1].content",
        "not_a_string",
    ),
    ("content empty", _set("input/messages/1/content", ""), "input.messages[1].content", "empty_content"),
    (
        "content whitespace",
        _set("input/messages/1/content", " \n "),
        "input.messages[1].content",
        "empty_content",
    ),
    ("unknown message key", _set("input/messages/1/name", "bob"), "input.messages[1].name", "unknown_key"),
    ("system not first", _set("input/messages/0/role", "user"), None, ""),  # placeholder, replaced below
    (
        "last input is assistant",
        _set("input/messages/1/role", "assistant"),
        "input.messages[1].role",
        "input_ends_with_assistant",
    ),
    ("unknown input key", _set("input/tools", []), "input.tools", "unknown_key"),
    (
        "preferred not a list",
        _set("preferred_output", {"role": "assistant", "content": "x"}),
        "preferred_output",
        "not_a_list",
    ),
    ("preferred missing", _set("preferred_output", DELETE), "preferred_output", "missing_field"),
    ("two preferred messages", _set("preferred_output/1", None), "", ""),  # replaced below
    ("zero non-preferred", _set("non_preferred_output", []), "non_preferred_output", "wrong_answer_count"),
    (
        "non-preferred wrong role",
        _set("non_preferred_output/0/role", "user"),
        "non_preferred_output[0].role",
        "invalid_role",
    ),
    (
        "non-preferred empty content",
        _set("non_preferred_output/0/content", ""),
        "non_preferred_output[0].content",
        "empty_content",
    ),
    (
        "non-preferred content a number",
        _set("non_preferred_output/0/content", 3),
        "non_preferred_output[0].content",
        "not_a_string",
    ),
    ("unknown top-level key", _set("score", 0.9), "score", "unknown_key"),
]
ROW_RULES = [r for r in ROW_RULES if r[3]]


def _system_second(row: Row) -> None:
    row["input"]["messages"].insert(1, {"role": "system", "content": "Late system prompt."})


def _two_preferred(row: Row) -> None:
    row["preferred_output"].append({"role": "assistant", "content": "Another."})


def _both_alias_and_name(row: Row) -> None:
    row["preferred_completion"] = row["preferred_output"]


def _only_system(row: Row) -> None:
    row["input"]["messages"] = row["input"]["messages"][:1]


ROW_RULES += [
    ("system not first", _system_second, "input.messages[1].role", "misplaced_system"),
    ("two preferred messages", _two_preferred, "preferred_output", "wrong_answer_count"),
    ("output and its alias", _both_alias_and_name, "preferred_completion", "duplicate_field"),
    ("input only a system message", _only_system, "input.messages", "only_system"),
]


@pytest.mark.parametrize(("rule", "change", "field", "code"), ROW_RULES, ids=[r[0] for r in ROW_RULES])
def test_row_rule_reports_line_and_field(
    rule: str,
    change: Callable[[Row], None],
    field: str,
    code: str,
    good: Callable[[int], Row],
    write_jsonl: Any,
) -> None:
    rows = [good(1), good(2), good(3), mutate(good(4), change), good(5)]
    report = validate_file(write_jsonl(rows))
    assert not report.ok, rule
    assert [(e.line, e.field, e.code) for e in report.errors] == [(4, field, code)]
    assert report.n_valid == 4 and report.n_examples == 5
    assert report.errors[0].message  # a sentence, not just a code


def test_aliases_are_accepted(good: Callable[[int], Row], write_jsonl: Any) -> None:
    rows = []
    for i in range(3):
        row = good(i)
        row["preferred_completion"] = row.pop("preferred_output")
        row["non_preferred_completion"] = row.pop("non_preferred_output")
        rows.append(row)
    report = validate_file(write_jsonl(rows))
    assert report.ok and report.format == "preference" and report.n_valid == 3


def test_multi_turn_input_is_valid(good: Callable[[int], Row], write_jsonl: Any) -> None:
    row = good(0)
    row["input"]["messages"] += [
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Sure?"},
    ]
    assert validate_file(write_jsonl([row, good(1), good(2)])).ok


def test_several_problems_on_one_line_are_all_listed(good: Callable[[int], Row], write_jsonl: Any) -> None:
    row = good(9)
    row["preferred_output"][0]["role"] = "user"
    row["non_preferred_output"][0]["content"] = ""
    row["extra"] = 1
    report = validate_file(write_jsonl([good(1), row, good(2), good(3)]))
    assert {(e.line, e.field) for e in report.errors} == {
        (2, "extra"),
        (2, "preferred_output[0].role"),
        (2, "non_preferred_output[0].content"),
    }


# --- file rules ---------------------------------------------------------------------------------


def codes(report: Any) -> list[tuple[int | None, str]]:
    return [(e.line, e.code) for e in report.errors]


def test_bom_at_start_is_accepted(good: Callable[[int], Row], write_jsonl: Any) -> None:
    path = write_jsonl([good(i) for i in range(3)])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert validate_file(path).ok


def test_bom_on_a_later_line_is_named(good: Callable[[int], Row], write_jsonl: Any) -> None:
    import json

    path = write_jsonl([good(0), b"\xef\xbb\xbf" + json.dumps(good(1)).encode(), good(2)])
    assert codes(validate_file(path)) == [(2, "misplaced_bom")]


def test_invalid_utf8_names_the_line(good: Callable[[int], Row], write_jsonl: Any) -> None:
    path = write_jsonl([good(0), good(1), b'{"input": "caf\xe9"}', good(3)])
    report = validate_file(path)
    assert codes(report) == [(3, "not_utf8")]
    assert "byte 15 of the line" in report.errors[0].message and "UTF-8" in report.errors[0].message


def test_extension_must_be_jsonl(good: Callable[[int], Row], write_jsonl: Any) -> None:
    report = validate_file(write_jsonl([good(i) for i in range(3)], name="data.csv"))
    assert codes(report) == [(None, "bad_extension")]
    # A stored blob has no extension; the caller names the original file instead.
    blob = write_jsonl([good(i) for i in range(3)], name="3f2a9c")
    assert validate_file(blob).ok
    assert codes(validate_file(blob, name="upload.json")) == [(None, "bad_extension")]


def test_gzip_is_read_transparently(good: Callable[[int], Row], tmp_path: Path) -> None:
    import json

    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(good(i)) + "\n" for i in range(4))
    report = validate_file(path)
    assert report.ok and report.n_examples == 4


def test_truncated_gzip_is_an_error_not_a_crash(good: Callable[[int], Row], tmp_path: Path) -> None:
    import json

    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(good(i)) + "\n" for i in range(50)).encode())[:-30])
    report = validate_file(path)
    assert not report.ok and "bad_gzip" in [e.code for e in report.errors]


def test_empty_file(write_jsonl: Any) -> None:
    report = validate_file(write_jsonl([]))
    assert codes(report) == [(None, "empty_file")]


def test_blank_lines_are_reported(good: Callable[[int], Row], write_jsonl: Any) -> None:
    report = validate_file(write_jsonl([good(0), "", good(1), "   ", good(2)]))
    assert codes(report) == [(2, "blank_line"), (4, "blank_line")]


def test_each_line_one_json_object(good: Callable[[int], Row], write_jsonl: Any) -> None:
    report = validate_file(write_jsonl([good(0), "[1, 2]", '{"input": ', good(3), good(4)]))
    assert codes(report) == [(2, "not_an_object"), (3, "invalid_json")]


def test_mixed_formats_name_both_lines(good: Callable[[int], Row], write_jsonl: Any) -> None:
    sft = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    report = validate_file(write_jsonl([good(0), good(1), sft, good(3)]))
    assert codes(report) == [(3, "mixed_formats")]
    assert "line 1" in report.errors[0].message and "SFT `messages`" in report.errors[0].message


def test_foreign_format_gets_a_convert_hint(write_jsonl: Any) -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3
    report = validate_file(write_jsonl(rows))
    assert codes(report) == [(1, "unknown_format"), (2, "unknown_format"), (3, "unknown_format")]
    assert "--from trl" in report.errors[0].message


def test_too_few_examples(good: Callable[[int], Row], write_jsonl: Any) -> None:
    assert codes(validate_file(write_jsonl([good(0), good(1)]))) == [(None, "too_few_examples")]


def test_too_many_examples(
    monkeypatch: pytest.MonkeyPatch, good: Callable[[int], Row], write_jsonl: Any
) -> None:
    from preftune.data import validate

    monkeypatch.setattr(validate, "MAX_EXAMPLES", 4)  # the rule, not 3M lines, is under test
    assert codes(validate_file(write_jsonl([good(i) for i in range(5)]))) == [(None, "too_many_examples")]
    assert validate_file(write_jsonl([good(i) for i in range(4)])).ok


def test_error_list_is_capped_with_a_count(good: Callable[[int], Row], write_jsonl: Any) -> None:
    rows = [good(0)] + ["not json"] * 250
    report = validate_file(write_jsonl(rows), max_errors=20)
    assert len(report.errors) == 20 and report.n_errors_total == 250
    assert [e.line for e in report.errors] == list(range(2, 22))
    assert report.to_dict()["n_errors_hidden"] == 230


# --- warnings: the file still passes --------------------------------------------------------------


def warning_codes(report: Any) -> list[tuple[int | None, str]]:
    return [(w.line, w.code) for w in report.warnings]


def test_identical_answers_warn(good: Callable[[int], Row], write_jsonl: Any) -> None:
    row = good(1)
    row["non_preferred_output"] = row["preferred_output"]
    report = validate_file(write_jsonl([good(0), row, good(2)]))
    assert report.ok and warning_codes(report) == [(2, "identical_answers")]


def test_whitespace_only_difference_warns(good: Callable[[int], Row], write_jsonl: Any) -> None:
    row = good(1)
    row["non_preferred_output"] = [{"role": "assistant", "content": "Paris. "}]
    row["preferred_output"] = [{"role": "assistant", "content": "Paris.\n"}]
    report = validate_file(write_jsonl([good(0), row, good(2)]))
    assert report.ok and warning_codes(report) == [(2, "whitespace_only_difference")]


def test_duplicates_warn_with_the_first_line(good: Callable[[int], Row], write_jsonl: Any) -> None:
    report = validate_file(write_jsonl([good(0), good(1), good(0), good(2), good(1), good(0)]))
    assert report.ok
    assert warning_codes(report) == [
        (3, "duplicate_example"),
        (5, "duplicate_example"),
        (6, "duplicate_example"),
    ]
    assert "line 1" in report.warnings[0].message and "line 2" in report.warnings[1].message


def test_very_long_line_warns(good: Callable[[int], Row], write_jsonl: Any) -> None:
    row = good(1)
    row["preferred_output"][0]["content"] = "word " * 30_000
    report = validate_file(write_jsonl([good(0), row, good(2)]))
    assert report.ok and warning_codes(report) == [(2, "long_line")]


def test_absurd_nesting_is_an_error_not_a_crash(good: Callable[[int], Row], write_jsonl: Any) -> None:
    deep_list = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_unknown = b'{"text": "x", "zzz": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}"
    report = validate_file(write_jsonl([good(0), deep_list, deep_unknown, good(3)]))
    assert [e.line for e in report.errors] == [2, 3]


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_lines_split_across_read_blocks(
    block: int, monkeypatch: pytest.MonkeyPatch, good: Callable[[int], Row], write_jsonl: Any
) -> None:
    from preftune.data import reader

    monkeypatch.setattr(reader, "READ_BUFFER", block)
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 400)
    huge = good(2)
    huge["preferred_output"][0]["content"] = "x" * 1000
    path = write_jsonl([good(0), good(1), huge, "", good(3), good(1)])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # the last line has no newline
    report = validate_file(path)
    assert codes(report) == [(3, "line_too_long"), (4, "blank_line")]
    assert warning_codes(report) == [(6, "duplicate_example")]
    assert (report.n_lines, report.n_examples, report.n_valid) == (6, 5, 4)


def test_bom_with_tiny_read_blocks(
    monkeypatch: pytest.MonkeyPatch, good: Callable[[int], Row], write_jsonl: Any
) -> None:
    from preftune.data import reader

    monkeypatch.setattr(reader, "READ_BUFFER", 1)
    path = write_jsonl([good(i) for i in range(3)])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert validate_file(path).ok


def test_progress_reports_bytes_up_to_the_total(
    monkeypatch: pytest.MonkeyPatch, good: Callable[[int], Row], write_jsonl: Any
) -> None:
    from preftune.data import reader

    monkeypatch.setattr(reader, "READ_BUFFER", 256)
    path = write_jsonl([good(i) for i in range(20)])
    calls: list[tuple[int, int]] = []
    validate_file(path, progress=lambda done, total: calls.append((done, total)))
    size = path.stat().st_size
    assert len(calls) > 5 and calls[-1] == (size, size)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_json_array_file_is_one_clear_error(good: Callable[[int], Row], tmp_path: Path) -> None:
    import json

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps([good(i) for i in range(5)], indent=2))
    report = validate_file(path)
    assert codes(report) == [(1, "json_array")] and "preftune data convert" in report.errors[0].message
    assert report.n_examples == 0 and report.n_lines == 1  # reading stopped at the first line
