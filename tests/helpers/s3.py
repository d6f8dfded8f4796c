"""An S3 server over HTTP for tests: moto's standalone server (`ThreadedMotoServer`) on a free port.

The blob code under test talks to it like to any S3-compatible endpoint (AWS_ENDPOINT_URL plus
credentials); nothing in `preftune` knows it is moto. Each test gets a bucket of its own.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers.infra import require
from helpers.ports import free_port

_bucket_counter = itertools.count()
# moto accepts any key pair unless told to check them; these only have to be well-formed.
ACCESS_KEY = "AKIAPREFTUNETEST0001"
SECRET_KEY = "preftune-test-secret-key-000000000000000"
REGION = "us-east-1"


def require_moto() -> None:
    try:
        import boto3  # noqa: F401
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError:
        require(False, "moto[server] and boto3 are not installed (pip install -e '.[dev]')")


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 on a free loopback port, in a thread of this process; yields its endpoint URL."""
    require_moto()
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO: thousands of lines for one multipart upload.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def client(endpoint: str) -> Any:
    """A plain boto3 client on `endpoint`, for a test to look into the bucket by itself."""
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def create_bucket(endpoint: str) -> str:
    name = f"preftune-test-{os.getpid()}-{next(_bucket_counter)}-{int(time.time() * 1000) % 100000}"
    client(endpoint).create_bucket(Bucket=name)
    return name


def s3_env(endpoint: str, bucket: str, prefix: str = "pt") -> dict[str, str]:
    """The environment that points a `preftune` process at `bucket` on `endpoint`."""
    return {
        "PREFTUNE_BLOB_URL": f"s3://{bucket}/{prefix}",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }


def s3_settings(home: Path, endpoint: str, bucket: str, **extra: Any) -> Any:
    """`Settings` for a store in `bucket` with `home` as the local directory."""
    from preftune.config import Settings

    return Settings(
        home=home,
        blob_url=f"s3://{bucket}/pt",
        s3_endpoint_url=endpoint,
        s3_region=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        **extra,
    )


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    pages = client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def open_uploads(endpoint: str, bucket: str) -> list[dict[str, Any]]:
    return list(client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", []))
