"""Browser-test fixtures: the real `preftune serve` on loopback and Debian's Chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.browser import CHROMIUM_ARGS, require_chromium, screenshots_dir
from helpers.models import install_base_model
from helpers.server import ServeProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ServeProcess]:
    """`preftune serve` with one runner and the tiny model as the base model `tiny-llama` (the job form
    and the playground refer to it by that name)."""
    require_chromium()  # no server to start when no browser can look at it
    home = tmp_path_factory.mktemp("console") / "home"
    install_base_model(home, tiny_model_dir)
    running = ServeProcess(
        home=home, workers=1, env={"WANDB_MODE": "disabled", "PREFTUNE_HEARTBEAT_SECONDS": "1"}
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium_path = require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=90_000)

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: ServeProcess) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server.base_url)
    # Waits are for the server (uploads, validation, a runner starting), so allow for a busy machine.
    context.set_default_timeout(90_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    # An uncaught script error is a broken console even when the assertions passed.
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def sign_in(server: ServeProcess) -> Callable[[Any, str | None], None]:
    def _sign_in(pg: Any, key: str | None = None) -> None:
        pg.goto("/")
        pg.get_by_label("API key").fill(key or server.api_key)
        pg.get_by_role("button", name="Sign in").click()
        pg.get_by_role("navigation", name="Main").wait_for()

    return _sign_in


# Every visible form control on a page must have an accessible name (a <label for>, a wrapping label or aria-label).
_UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
  .filter((el) => el.offsetParent !== null)
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
    && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 120))"""


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where `shoot` saves: a temporary directory, or docs/screenshots under `make screenshots`."""
    return screenshots_dir(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture
def shoot(screenshots: Path) -> Callable[..., None]:
    """Save a screenshot of the page as NAME.png in `screenshots` (docs/screenshots, which the README
    shows, only under `make screenshots`).

    Each page shot is also checked for unlabelled form controls.
    """

    def _shoot(pg: Any, name: str, *, narrow: bool = False, full_page: bool = True) -> None:
        unlabelled = pg.evaluate(_UNLABELLED)
        assert not unlabelled, f"form controls without a label on {name}: {unlabelled}"
        if narrow:
            size = pg.viewport_size
            pg.set_viewport_size({"width": 390, "height": 844})
            pg.wait_for_timeout(150)  # let charts and layout settle after the resize
            pg.screenshot(path=str(screenshots / f"{name}.png"), full_page=full_page)
            pg.set_viewport_size(size)
        else:
            pg.screenshot(path=str(screenshots / f"{name}.png"), full_page=full_page)

    return _shoot
