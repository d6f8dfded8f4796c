"""Browser-test fixtures: the real `preftune serve` on loopback and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class Server:
    """A running `preftune serve`: its URL, home and the admin key it wrote."""

    def __init__(self, url: str, home: Path, admin_key: str) -> None:
        self.url = url
        self.home = home
        self.admin_key = admin_key

    def api(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/v1",
            headers={"Authorization": f"Bearer {key or self.admin_key}"},
            timeout=60,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)")
    home = tmp_path_factory.mktemp("console-home")
    # A named base model on the server: the job form and the playground refer to it as tiny-llama.
    shutil.copytree(tiny_model_dir, home / "models" / "tiny-llama")
    port = _free_port()
    env = {
        **os.environ,
        "PREFTUNE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PREFTUNE_WORKERS": "1",
        "PREFTUNE_HEARTBEAT_SECONDS": "1",
    }
    for var in ("PREFTUNE_API_KEY", "PREFTUNE_BASE_URL", "PREFTUNE_DATABASE_URL"):
        env.pop(var, None)
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("preftune")),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    # Generous: on a shared 2-core machine importing torch alone can take a minute.
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"preftune serve exited with {proc.returncode}:\n{_tail(home)}")
            try:
                if (
                    httpx.get(f"{url}/v1/fine-tunes/spec", timeout=2).status_code == 200
                    and (home / "credentials").is_file()
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"preftune serve did not answer on {url}:\n{_tail(home)}")
            time.sleep(0.3)
        admin_key = (home / "credentials").read_text(encoding="utf-8").splitlines()[0].strip()
        yield Server(url, home, admin_key)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _tail(home: Path) -> str:
    path = home / "server.log"
    return path.read_text(errors="replace")[-4000:] if path.is_file() else "(no log)"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=90_000)

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server.url)
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
def sign_in(server: Server) -> Callable[[Any, str | None], None]:
    def _sign_in(pg: Any, key: str | None = None) -> None:
        pg.goto("/")
        pg.get_by_label("API key").fill(key or server.admin_key)
        pg.get_by_role("button", name="Sign in").click()
        pg.get_by_role("navigation", name="Main").wait_for()

    return _sign_in


# Every visible form control on a page must have an accessible name (a <label for>, a wrapping label or aria-label).
_UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
  .filter((el) => el.offsetParent !== null)
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
    && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 120))"""


@pytest.fixture
def shoot() -> Callable[..., None]:
    """Save a screenshot of the page to docs/screenshots/NAME.png (the README shows them).

    Each page shot is also checked for unlabelled form controls.
    """

    def _shoot(pg: Any, name: str, *, narrow: bool = False, full_page: bool = True) -> None:
        unlabelled = pg.evaluate(_UNLABELLED)
        assert not unlabelled, f"form controls without a label on {name}: {unlabelled}"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        if narrow:
            size = pg.viewport_size
            pg.set_viewport_size({"width": 390, "height": 844})
            pg.wait_for_timeout(150)  # let charts and layout settle after the resize
            pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)
            pg.set_viewport_size(size)
        else:
            pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)

    return _shoot
