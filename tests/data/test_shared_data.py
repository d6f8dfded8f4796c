"""Every file in ../shared/data validates (after conversion where needed) with the counts of SOURCES.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.data import SHARED_DATA as SHARED
from preftune.data import validate_file
from preftune.data.convert import convert_file


@pytest.fixture(autouse=True)
def _shared_data_present(shared_data: Path) -> None:
    """Every test here reads SHARED_DATA: skip (fail under CI=true) when it is missing."""


def test_orca_is_canonical() -> None:
    report = validate_file(SHARED / "orca_dpo_pairs" / "orca_dpo_pairs.jsonl")
    assert report.ok and report.format == "preference" and report.n_examples == 284  # no trailing newline


def test_hh_rlhf() -> None:
    report = validate_file(SHARED / "hh_rlhf_harmless_base" / "test.jsonl.gz")
    assert not report.ok and report.n_examples == 2312 and "--from hh-rlhf" in report.errors[0].message


@pytest.mark.parametrize("target", ["preference", "sft"])
def test_hh_rlhf_converted(tmp_path: Path, target: str) -> None:
    out = tmp_path / "hh.jsonl"
    report = convert_file(
        SHARED / "hh_rlhf_harmless_base" / "test.jsonl.gz", out, source="hh-rlhf", to=target
    )  # type: ignore[arg-type]
    mismatched = [p for p in report.problems if p.code == "prefix_mismatch"]
    empty = [p for p in report.problems if p.code == "empty_answer"]
    # SOURCES.md: 2312 records, 2307 share everything up to the last Assistant turn; 4 of those
    # have an empty last turn, which is no answer to train on.
    assert report.n_read == 2312 and len(mismatched) == 5 and len(empty) == 4
    assert report.n_written == 2312 - 5 - 4 == report.n_read - report.n_problems_total
    check = validate_file(out)
    assert check.ok and check.n_examples == 2303
    assert check.format == ("preference" if target == "preference" else "sft_messages")


@pytest.mark.parametrize("name", ["dpo_en_demo.json", "dpo_zh_demo.json"])
def test_llamafactory(tmp_path: Path, name: str) -> None:
    out = tmp_path / "lf.jsonl"
    report = convert_file(SHARED / "llamafactory_dpo" / name, out, source="sharegpt")
    assert (report.n_read, report.n_written, report.n_problems_total) == (300, 300, 0)
    check = validate_file(out)
    assert check.ok and check.n_examples == 300


def test_stack_exchange(tmp_path: Path) -> None:
    out = tmp_path / "se.jsonl"
    report = convert_file(
        SHARED / "stack_exchange_paired" / "stack_exchange_paired_tiny.json", out, source="stack-exchange"
    )
    assert (report.n_read, report.n_written) == (25, 25)
    assert validate_file(out).ok and validate_file(out).n_examples == 25
