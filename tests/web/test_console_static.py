"""The console router serves `preftune/web/` at `/`: files, the index fallback, and what it must not answer."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from preftune.api.routes import console


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    console.mount(app)
    return TestClient(app)


def test_index_is_the_console_with_a_strict_csp(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/js/app.js">' in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp


def test_every_asset_the_index_references_is_served(client: TestClient) -> None:
    index = client.get("/").text
    refs = re.findall(r'(?:src|href)="(/[^"#]+)"', index)
    assert "/vendor/uPlot.iife.min.js" in refs and "/js/app.js" in refs
    for ref in refs:
        response = client.get(ref)
        assert response.status_code == 200, ref
        assert response.content, ref


def test_javascript_modules_have_a_javascript_type(client: TestClient) -> None:
    response = client.get("/js/app.js")
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["x-content-type-options"] == "nosniff"


def test_every_module_import_resolves(client: TestClient) -> None:
    # A static import of a missing module blanks the whole console, so check the import graph.
    seen: set[str] = set()
    pending = ["/js/app.js"]
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        seen.add(url)
        response = client.get(url)
        assert response.status_code == 200, f"{url} is imported but not served"
        base = url.rsplit("/", 1)[0]
        for target in re.findall(r'^import .* from "(\.{1,2}/[^"]+)";', response.text, flags=re.M):
            parts = f"{base}/{target}".split("/")
            resolved: list[str] = []
            for part in parts:
                if part == "..":
                    resolved.pop()
                elif part != ".":
                    resolved.append(part)
            pending.append("/".join(resolved))
    assert {"/js/pages/job.js", "/js/pages/datasets.js", "/js/api.js"} <= seen


def test_console_urls_fall_back_to_the_index(client: TestClient) -> None:
    response = client.get("/jobs/ftjob-123")
    assert response.status_code == 200
    assert "<title>preftune console</title>" in response.text


def test_a_missing_asset_is_a_404_not_the_index(client: TestClient) -> None:
    response = client.get("/js/nope.js")
    assert response.status_code == 404
    assert "nope.js" in response.text


def test_unknown_api_paths_keep_a_json_error(client: TestClient) -> None:
    response = client.get("/v1/not-a-route")
    assert response.status_code == 404
    error = response.json()["error"]
    assert "/v1/not-a-route" in error["message"]


def test_paths_cannot_escape_the_web_directory(client: TestClient) -> None:
    for path in ("/..%2F..%2Fconfig.py", "/js/..%2F..%2F..%2Fconfig.py", "/%2e%2e/%2e%2e/errors.py"):
        response = client.get(path)
        assert "Settings" not in response.text and "PreftuneError" not in response.text, path


def test_vendored_libraries_are_recorded_with_their_licenses() -> None:
    vendor = console.WEB_DIR / "vendor"
    versions = (vendor / "VERSIONS.md").read_text()
    for name in ("uPlot.iife.min.js", "uPlot.min.css", "diff.min.js"):
        assert (vendor / name).is_file() and name in versions
    assert (vendor / "LICENSE.uPlot").is_file() and (vendor / "LICENSE.diff").is_file()
    assert "MIT" in (vendor / "uPlot.iife.min.js").read_text()[:200]


def test_console_has_no_remote_urls() -> None:
    # Offline by design: nothing in the console may load from another origin at run time.
    for path in console.WEB_DIR.rglob("*"):
        if path.suffix in {".html", ".js", ".css"} and "vendor" not in path.parts:
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"""(src|href)\s*=\s*["']https?://""", text), path
            assert "cdn." not in text, path
