"""`PREFTUNE_BLOB_URL` picks the backend: the local directory by default, `file://`, or `s3://bucket/prefix`."""

from __future__ import annotations

from pathlib import Path

import pytest

from preftune.config import Settings
from preftune.store.blobs import BlobStore, open_blob_store
from preftune.store.s3 import S3BlobStore, parse_s3_url


def test_default_and_file_urls_are_local_directories(tmp_path: Path) -> None:
    store = open_blob_store(Settings(home=tmp_path))
    assert type(store) is BlobStore and store.root == tmp_path / "blobs" and not store.remote
    elsewhere = open_blob_store(Settings(home=tmp_path, blob_url=f"file://{tmp_path / 'other'}"))
    assert elsewhere.root == tmp_path / "other"


def test_s3_url_names_bucket_and_prefix(tmp_path: Path) -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    store = open_blob_store(Settings(home=tmp_path, blob_url="s3://bucket/team", s3_region="us-east-1"))
    assert isinstance(store, S3BlobStore) and store.remote
    assert store.blob_key("a" * 64) == f"team/blobs/aa/{'a' * 64}"
    with pytest.raises(ValueError, match="names no bucket"):
        parse_s3_url("s3:///prefix")
    with pytest.raises(ValueError, match="s3://bucket/prefix or file:///dir"):
        open_blob_store(Settings(home=tmp_path, blob_url="gs://bucket"))


def test_aws_variables_are_read_under_their_own_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    settings = Settings(home=tmp_path)
    assert settings.s3_endpoint_url == "http://minio.internal:9000" and settings.s3_region == "eu-west-1"
    assert settings.aws_secret_access_key is not None
    assert "s3cr3t" not in repr(settings)  # a secret: never printed
    # Runner processes get their settings as data: the AWS values survive the trip.
    again = Settings(**settings.model_dump())
    assert again.s3_endpoint_url == settings.s3_endpoint_url
    assert again.aws_secret_access_key == settings.aws_secret_access_key
