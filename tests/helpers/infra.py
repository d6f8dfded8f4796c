"""Missing infrastructure: a skip on a developer's machine, a failure in CI.

A test that needs something outside the checkout (the shared data, PostgreSQL's binaries, Chromium)
calls `require(condition, reason)`. Locally a missing piece skips the test, so the inner loop works
on any machine; under `CI=true` it fails, so CI can never go green by silently skipping the tests it
exists to run. Skips that are about the platform, not the set-up (an old glibc, a PyTorch build without
oneDNN, no CUDA) stay plain `pytest.skip`: CI cannot install those away.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """True when the environment says this is a CI run (`CI=true`, as GitHub and GitLab set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def require(condition: object, reason: str) -> None:
    """Go on if `condition` holds; otherwise skip the test (locally) or fail it (under `CI=true`).

    `reason` says what is missing and how to get it; it is the skip or failure message."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} [CI=true: missing infrastructure fails instead of skipping]", pytrace=False)
    pytest.skip(reason)
