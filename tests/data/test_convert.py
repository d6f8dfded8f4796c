"""Converters: each public format into preftune's; unfaithful records reported, never mangled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from preftune.data import PreferenceExample, iter_examples, validate_file
from preftune.data.convert import SourceError, convert_file

U = {"role": "user", "content": "Q?"}


def run(tmp_path: Path, rows: list[Any], source: str, *, array: bool = False, to: str = "preference") -> Any:
    src = tmp_path / ("in.json" if array else "in.jsonl")
    if array:
        src.write_text(json.dumps(rows))
    else:
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    report = convert_file(src, out, source=source, to=to)  # type: ignore[arg-type]
    return report, out


def examples(path: Path) -> list[PreferenceExample]:
    return [e for e in iter_examples(path) if isinstance(e, PreferenceExample)]


def test_hh_rlhf_shared_prefix_and_mismatch(tmp_path: Path) -> None:
    ok = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Knock knock.",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No.",
    }
    differs = {
        "chosen": "\n\nHuman: hi\n\nAssistant: A\n\nHuman: x\n\nAssistant: y",
        "rejected": "\n\nHuman: hi\n\nAssistant: B\n\nHuman: x\n\nAssistant: z",
    }
    report, out = run(tmp_path, [ok, differs, ok, ok], "hh-rlhf")
    assert (report.n_read, report.n_written) == (4, 3)
    assert [(p.line, p.field, p.code) for p in report.problems] == [(2, "rejected[1]", "prefix_mismatch")]
    first = examples(out)[0]
    assert first.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "joke?"},
    ]
    assert first.preferred["content"] == "Knock knock." and first.non_preferred["content"] == "No."


def test_trl_string_conversational_and_implicit_prompt(tmp_path: Path) -> None:
    string = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    conversational = {
        "prompt": [U],
        "chosen": [{"role": "assistant", "content": "A"}],
        "rejected": [{"role": "assistant", "content": "B"}],
    }
    implicit = {
        "chosen": [U, {"role": "assistant", "content": "A"}],
        "rejected": [U, {"role": "assistant", "content": "B"}],
    }
    no_prompt_strings = {"chosen": "a", "rejected": "b"}
    report, out = run(tmp_path, [string, conversational, implicit, no_prompt_strings], "trl")
    assert report.n_written == 3 and [(p.line, p.field) for p in report.problems] == [(4, "prompt")]
    got = examples(out)
    assert (
        got[0].messages == [{"role": "user", "content": "The sky is"}]
        and got[0].preferred["content"] == " blue."
    )
    assert got[1].messages == [U] and got[2].messages == [U] and got[2].non_preferred["content"] == "B"


def test_ultrafeedback_ties_dropped_and_counted(tmp_path: Path) -> None:
    def row(sc: float, sr: float) -> dict[str, Any]:
        return {
            "prompt": "Q?",
            "chosen": [U, {"role": "assistant", "content": "good"}],
            "rejected": [U, {"role": "assistant", "content": "bad"}],
            "score_chosen": sc,
            "score_rejected": sr,
            "prompt_id": "x",
        }

    report, out = run(tmp_path, [row(9, 3), row(5, 5), row(8, 2), row(7.5, 7.5), row(6, 1)], "ultrafeedback")
    assert (report.n_written, report.n_dropped, report.n_problems_total) == (3, 2, 0)
    assert validate_file(out).ok


def test_sharegpt_roles_system_and_unsupported_turns(tmp_path: Path) -> None:
    good = {
        "conversations": [{"from": "human", "value": "hi"}],
        "chosen": {"from": "gpt", "value": "A"},
        "rejected": {"from": "gpt", "value": "B"},
        "system": "Be kind.",
    }
    tool = {
        "conversations": [{"from": "observation", "value": "{}"}],
        "chosen": {"from": "gpt", "value": "A"},
        "rejected": {"from": "gpt", "value": "B"},
    }
    report, out = run(tmp_path, [good, good, tool, good], "sharegpt", array=True)
    assert report.unit == "record" and report.n_written == 3
    assert [(p.line, p.field, p.code) for p in report.problems] == [
        (3, "conversations[0].from", "invalid_role")
    ]
    assert examples(out)[0].messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
    ]


def test_stack_exchange(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "response_j": "best", "response_k": "worse", "qid": i} for i in range(3)]
    report, out = run(tmp_path, rows, "stack-exchange", array=True)
    got = examples(out)
    assert report.n_written == 3 and got[1].messages == [{"role": "user", "content": "q1"}]
    assert got[1].preferred["content"] == "best" and got[1].non_preferred["content"] == "worse"


def test_to_sft_is_context_plus_preferred(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "response_j": "best", "response_k": "worse"} for i in range(3)]
    report, out = run(tmp_path, rows, "stack-exchange", to="sft")
    assert report.target == "sft"
    line = json.loads(out.read_text().splitlines()[0])
    assert line == {"messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "best"}]}
    assert validate_file(out).format == "sft_messages"


def test_converted_rows_that_break_rules_are_reported(tmp_path: Path) -> None:
    rows = [{"question": "q", "response_j": "", "response_k": "worse"}] + [
        {"question": f"q{i}", "response_j": "a", "response_k": "b"} for i in range(3)
    ]
    report, out = run(tmp_path, rows, "stack-exchange")
    assert (
        report.n_written == 3
        and report.problems[0].line == 1
        and "preferred_output[0].content" in (report.problems[0].message)
    )
    assert validate_file(out).ok


def test_bad_json_lines_are_problems_and_bad_arrays_raise(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"question": "q", "response_j": "a", "response_k": "b"}\n{oops\n')
    report = convert_file(src, tmp_path / "o.jsonl", source="stack-exchange")
    assert [(p.line, p.code) for p in report.problems] == [(2, "invalid_json")]
    broken = tmp_path / "in.json"
    broken.write_text('[{"question": ')
    with pytest.raises(SourceError):
        convert_file(broken, tmp_path / "o2.jsonl", source="stack-exchange")
    assert not (tmp_path / "o2.jsonl").exists()  # nothing half-written


def test_trl_prompt_repeated_inside_whole_conversations(tmp_path: Path) -> None:
    whole = {
        "prompt": "Q?",
        "chosen": [U, {"role": "assistant", "content": "A"}],
        "rejected": [U, {"role": "assistant", "content": "B"}],
    }
    other = {
        "prompt": "Other?",
        "chosen": [U, {"role": "assistant", "content": "A"}],
        "rejected": [U, {"role": "assistant", "content": "B"}],
    }
    report, out = run(tmp_path, [whole, other, whole, whole], "trl")
    assert report.n_written == 3 and [(p.line, p.code) for p in report.problems] == [(2, "prefix_mismatch")]
    assert examples(out)[0].messages == [U] and examples(out)[0].preferred["content"] == "A"


def test_ultrafeedback_answers_only(tmp_path: Path) -> None:
    row = {
        "prompt": "Q?",
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }
    report, out = run(tmp_path, [row] * 3, "ultrafeedback")
    assert report.n_written == 3 and examples(out)[0].messages == [U]


def test_missing_output_folder_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    with pytest.raises(ValueError, match="does not exist"):
        convert_file(src, tmp_path / "nope" / "out.jsonl", source="trl")
