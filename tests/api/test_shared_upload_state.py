"""Two API servers behind one bucket, sharing only the database and the bucket (each its own
PREFTUNE_HOME): a presigned upload URL one issues is spent on the other, exactly once even when PUTs
race on both, and a Fireworks dataset announced on one is uploaded, validated and listed on the other.
The real apps on loopback ports, moto's S3 server for the bucket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fireworks
import httpx
import pytest
from cryptography.fernet import Fernet

from helpers import s3
from helpers.server import serve_in_thread
from preftune.api.app import create_app
from preftune.service import keys as key_service


def _pair(i: int) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"{i} + {i}?"}]},
        "preferred_output": [{"role": "assistant", "content": f"{2 * i}."}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }


@dataclass
class Pair:
    a: str  # base URLs of the two servers
    b: str
    key: str
    account: str
    other_key: str
    other_account: str
    data: bytes

    def fireworks(self, base_url: str, key: str | None = None) -> fireworks.Fireworks:
        return fireworks.Fireworks(
            api_key=key or self.key, account_id=self.account, base_url=base_url, max_retries=0
        )


@pytest.fixture
def servers(tmp_path: Path, s3_server: str, s3_bucket: str) -> Iterator[Pair]:
    secret = Fernet.generate_key().decode()  # one key for the deployment, as the README says
    database = f"sqlite:///{tmp_path / 'shared.db'}"

    def app(name: str) -> Any:
        settings = s3.s3_settings(
            tmp_path / name, s3_server, s3_bucket, database_url=database, secret_key=secret,
            allow_on_demand_load=False,
        )  # fmt: skip
        return create_app(settings)

    first, second = app("api-1"), app("api-2")
    with serve_in_thread(first) as a, serve_in_thread(second) as b:
        with first.state.db.session() as session:
            alice = key_service.create_owner(session, "alice")
            _, key = key_service.create_key(session, alice.id, "a")
            bob = key_service.create_owner(session, "bob")
            _, other = key_service.create_key(session, bob.id, "b")
        data = "".join(json.dumps(_pair(i)) + "\n" for i in range(6)).encode()
        yield Pair(a, b, key, alice.id, other, bob.id, data)
    assert not (tmp_path / "api-1" / "uploads").exists() and not (tmp_path / "api-2" / "datasets").exists()


def _start_upload(base_url: str, key: str) -> tuple[str, str]:
    """Together's handshake on one server: (file id, the presigned URL's path)."""
    started = httpx.post(
        f"{base_url}/v1/files",
        headers={"Authorization": f"Bearer {key}", "User-Agent": "Together/Python 3.1.1"},
        data={"purpose": "fine-tune", "file_name": "pairs.jsonl", "file_type": "jsonl"},
        follow_redirects=False,
    )
    assert started.status_code == 302, started.text
    return started.headers["X-Together-File-Id"], httpx.URL(started.headers["Location"]).path


def test_a_grant_issued_by_one_server_is_spent_once_on_any(servers: Pair) -> None:
    file_id, path = _start_upload(servers.a, servers.key)
    done = httpx.put(f"{servers.b}{path}", content=servers.data)  # the other server takes it
    assert done.status_code == 200, done.text
    assert done.json()["id"] == file_id
    again = httpx.put(f"{servers.a}{path}", content=servers.data)
    assert again.status_code == 409 and again.json()["error"]["code"] == "upload_url_used"
    seen = httpx.get(f"{servers.a}/v1/files/{file_id}", headers={"Authorization": f"Bearer {servers.key}"})
    assert seen.status_code == 200 and seen.json()["bytes"] == len(servers.data)

    # Racing PUTs of one fresh URL on both servers: exactly one wins.
    file_id, path = _start_upload(servers.b, servers.key)
    urls = [f"{base}{path}" for base in (servers.a, servers.b) * 4]
    with ThreadPoolExecutor(len(urls)) as pool:
        codes = sorted(
            pool.map(lambda url: httpx.put(url, content=servers.data, timeout=60).status_code, urls)
        )
    assert codes == [200] + [409] * (len(urls) - 1)


def test_a_dataset_announced_on_one_server_is_finished_on_the_other(servers: Pair) -> None:
    on_a, on_b = servers.fireworks(servers.a), servers.fireworks(servers.b)
    on_a.datasets.create(dataset_id="shared-pairs", dataset={"display_name": "Shared", "example_count": "6"})
    assert on_b.datasets.get("shared-pairs").state == "UPLOADING"
    size = str(len(servers.data))
    endpoint = on_b.datasets.get_upload_endpoint("shared-pairs", filename_to_size={"pairs.jsonl": size})
    url = (endpoint.filename_to_signed_urls or {})["pairs.jsonl"]
    put = httpx.put(f"{servers.a}{httpx.URL(url).path}", content=servers.data)
    assert put.status_code == 200, put.text
    assert on_b.datasets.get("shared-pairs").state == "UPLOADING"  # bytes in, not validated yet
    on_a.datasets.validate_upload("shared-pairs", body={})
    ready = on_b.datasets.get("shared-pairs")
    assert ready.state == "READY" and ready.display_name == "Shared"
    assert [d.name.rsplit("/", 1)[-1] for d in on_a.datasets.list() if d.name] == ["shared-pairs"]

    # Announcing the name again on the other server is a conflict; another owner sees nothing.
    with pytest.raises(fireworks.ConflictError):
        on_b.datasets.create(dataset_id="shared-pairs", dataset={})
    bob = fireworks.Fireworks(
        api_key=servers.other_key, account_id=servers.other_account, base_url=servers.b, max_retries=0
    )
    assert [d.name for d in bob.datasets.list()] == []
    on_b.datasets.delete("shared-pairs")
    with pytest.raises(fireworks.NotFoundError):
        on_a.datasets.get("shared-pairs")
