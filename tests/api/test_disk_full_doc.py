"""The OpenAPI document lists the 507 of a full disk where one can happen (every write, and the
download that builds its archive), in the error envelope, and nowhere else: the fuzz test holds the
server to the codes it documents. The disk itself fills in tests/e2e/test_disk_full_e2e.py."""

from __future__ import annotations

from pathlib import Path

from preftune.api.app import create_app
from preftune.config import Settings


def test_507_is_documented_on_every_write_and_the_download_only(tmp_path: Path) -> None:
    schema = create_app(Settings(home=tmp_path / "home")).openapi()
    writes, reads = 0, 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if method in ("post", "put", "patch", "delete") or path.endswith("/download"):
                assert "507" in responses, (method, path)
                ref = responses["507"]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorResponse", (method, path)
                writes += 1
            else:
                assert "507" not in responses, (method, path)
                reads += 1
    assert "507" in schema["paths"]["/v1/files"]["post"]["responses"]
    assert writes >= 10 and reads >= 15, (writes, reads)
