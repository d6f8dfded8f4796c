"""The README stays true: its knob table is generated from TrainingSpec, and its commands exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_knob_table_matches_training_spec() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "readme_knobs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_names_the_two_setup_commands() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert "torch==2.13.0" in makefile and "\ndemo:" in makefile and "\ntest:" in makefile
