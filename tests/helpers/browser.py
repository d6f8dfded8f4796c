"""Debian's Chromium for the browser tests, and where their screenshots go.

Screenshots land in a temporary directory, so a test run never changes the checkout. `make screenshots`
sets `PREFTUNE_SCREENSHOTS_DIR=docs/screenshots` to refresh the images the README shows."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.data import REPO_ROOT
from helpers.infra import require

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS_ENV = "PREFTUNE_SCREENSHOTS_DIR"


def require_chromium() -> Path:
    """Chromium's executable, or a skip (a failure under `CI=true`)."""
    require(
        CHROMIUM.exists(), f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)"
    )
    return CHROMIUM


def screenshots_dir(default: Path) -> Path:
    """`PREFTUNE_SCREENSHOTS_DIR` (relative to the checkout) when set, else `default` (a temporary dir)."""
    chosen = os.environ.get(SCREENSHOTS_ENV)
    path = (REPO_ROOT / chosen) if chosen else default
    path.mkdir(parents=True, exist_ok=True)
    return path
