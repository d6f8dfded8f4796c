"""The test harness's rule for missing infrastructure: a skip on a developer's machine, a failure under
`CI=true` (so CI cannot pass by skipping the tests it exists to run)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import browser, data, postgres
from helpers.infra import in_ci, require

TESTS_DIR = Path(__file__).resolve().parent

# A test file for a pytest of its own: one test needs the shared data (through the harness's
# `orca_path` fixture), one calls `require` directly.
PROBE = """
from helpers.infra import require


def test_needs_the_shared_data(orca_path):
    assert orca_path.is_file()


def test_needs_a_missing_thing():
    require(False, "the probe's thing is missing")
"""


def _run_probe(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """pytest on PROBE with the harness's fixtures, the shared data pointed at a missing directory."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "test_probe.py").write_text(PROBE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "PREFTUNE_TEST_SHARED_DATA": str(tmp_path / "no-data")}
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    plugins = ["-p", "helpers.fixtures", "-p", "no:cacheprovider"]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            *plugins,
            "-c",
            str(tmp_path / "pytest.ini"),
            "test_probe.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_infrastructure_skips_without_ci(tmp_path: Path) -> None:
    run = _run_probe(tmp_path, ci=None)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 skipped" in run.stdout and "no-data" in run.stdout, run.stdout


def test_missing_infrastructure_fails_under_ci(tmp_path: Path) -> None:
    run = _run_probe(tmp_path, ci="true")
    assert run.returncode == 1, run.stdout + run.stderr
    # The fixture's failure is an error in set-up, the direct call a failed test; neither is a skip.
    assert "1 failed, 1 error" in run.stdout and "skipped" not in run.stdout, run.stdout
    assert "shared data not found at" in run.stdout and "the probe's thing is missing" in run.stdout
    assert "CI=true: missing infrastructure fails instead of skipping" in run.stdout


@pytest.mark.parametrize(
    ("value", "ci"), [("true", True), ("TRUE", True), ("1", True), ("false", False), ("", False)]
)
def test_ci_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, ci: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_require_lets_a_present_thing_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require(True, "never shown")


def test_every_infrastructure_check_follows_the_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Shared data, PostgreSQL and Chromium: each missing one fails under CI=true and skips without it."""
    monkeypatch.setattr(data, "SHARED_DATA", tmp_path / "no-data")
    monkeypatch.setattr(postgres, "bin_dir", lambda: None)
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    checks = [data.require_shared, postgres.require_postgres, browser.require_chromium]
    for ci, expected in (("true", "failed"), ("false", "skipped")):
        monkeypatch.setenv("CI", ci)
        assert [_outcome(check) for check in checks] == [expected] * len(checks), f"CI={ci}"


def _outcome(check: Callable[[], object]) -> str:
    """How a test calling `check` ends: passed, skipped or failed."""
    try:
        check()
    except pytest.skip.Exception:
        return "skipped"
    except pytest.fail.Exception:
        return "failed"
    return "passed"
