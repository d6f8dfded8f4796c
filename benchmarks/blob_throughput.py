"""Blob store throughput and memory: upload and download of one large file, local directory vs S3.

Each measurement runs in a child process of its own, so that its peak RSS is its own:

- local upload:   `BlobStore.stage_path` + `place` (what an accepted upload does: copy, fsync, rename);
- local download: `BlobStore.iter_range` over the whole blob (what `GET /v1/files/{id}/content` streams);
- s3 upload:      the same two calls on `S3BlobStore` (stage on disk, then a streaming multipart upload
                  with a SHA-256 per part);
- s3 download:    `iter_range` streamed from the object (the API's download path);
- s3 fetch:       `fetch` into the local cache, checked by sha256 (a runner's path to its training data);
- obstore upload / download (with `--obstore`, if the `obstore` package is installed): the same bytes
  through obstore's own multipart `put` (16 MiB parts, its default 12 in flight) and `get().stream()`,
  the alternative client the issue asked to measure against boto3.

The S3 server is moto's standalone server (`moto_server`) in a process of its own on loopback: it keeps
objects in memory and is not real S3, so the S3 numbers are the client's costs plus moto's, not a
network's. Prints MB/s and peak RSS (and its rise over the process's RSS before the call).

    .venv/bin/python benchmarks/blob_throughput.py             # 1 GiB
    .venv/bin/python benchmarks/blob_throughput.py --mib 200   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
BUCKET = "bench"


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _store(kind: str, home: Path, endpoint: str) -> object:
    from preftune.config import Settings
    from preftune.store.blobs import open_blob_store

    if kind == "local":
        return open_blob_store(Settings(home=home))
    return open_blob_store(
        Settings(
            home=home,
            blob_url=f"s3://{BUCKET}/bench",
            s3_endpoint_url=endpoint,
            s3_region="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
    )


def obstore_phase(what: str, endpoint: str, source: Path) -> dict[str, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id="bench",
        secret_access_key="bench",
        client_options={"allow_http": True},
    )
    obstore.list(store, prefix="warm").collect()
    before = _rss_mib()
    started = time.perf_counter()
    size = source.stat().st_size
    if what == "upload":
        obstore.put(store, "obstore/big.bin", source, chunk_size=16 * MiB)
    else:
        got = 0
        for chunk in obstore.get(store, "obstore/big.bin").stream(min_chunk_size=MiB):
            got += len(chunk)
        assert got == size
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "mb_s": size / MiB / seconds, "peak_mib": _peak_mib(), "before_mib": before}


def phase(kind: str, what: str, home: Path, endpoint: str, source: Path, sha: str) -> dict[str, float]:
    """One measurement in this (child) process."""
    if kind == "obstore":
        return obstore_phase(what, endpoint, source)
    store = _store(kind, home, endpoint)
    # Warm the client's imports and connection so the numbers are about the bytes.
    store.check()  # type: ignore[attr-defined]
    before = _rss_mib()
    started = time.perf_counter()
    size = source.stat().st_size
    if what == "upload":
        staged = store.stage_path(source)  # type: ignore[attr-defined]
        with store.references():  # type: ignore[attr-defined]
            info = store.place(staged)  # type: ignore[attr-defined]
        assert info.sha256 == sha
    elif what == "download":
        got = 0
        for chunk in store.iter_range(sha):  # type: ignore[attr-defined]
            got += len(chunk)
        assert got == size
    elif what == "fetch":
        path = store.fetch(sha)  # type: ignore[attr-defined]
        assert path.stat().st_size == size
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "mb_s": size / MiB / seconds, "peak_mib": _peak_mib(), "before_mib": before}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child(kind: str, what: str, home: Path, endpoint: str, source: Path, sha: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", kind, what, str(home), endpoint, str(source), sha],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=1024, help="File size in MiB (default 1024).")
    parser.add_argument("--obstore", action="store_true", help="Also measure the obstore client.")
    parser.add_argument("--phase", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        kind, what, home, endpoint, source, sha = args.phase
        print(json.dumps(phase(kind, what, Path(home), endpoint, Path(source), sha)))
        return

    import hashlib

    import boto3

    work = Path(tempfile.mkdtemp(prefix="blob-bench-"))
    port = _free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        source = work / "big.bin"
        hasher = hashlib.sha256()
        with source.open("wb") as out:
            block = os.urandom(MiB)
            for i in range(args.mib):
                chunk = block[i % 997 :] + block[: i % 997]  # every MiB different, cheap to make
                hasher.update(chunk)
                out.write(chunk)
        sha = hasher.hexdigest()
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        phases = [
            ("local", "upload", "local"),
            ("local", "download", "local"),
            ("s3", "upload", "s3-a"),
            ("s3", "download", "s3-b"),
            ("s3", "fetch", "s3-b"),
        ]
        if args.obstore:
            phases += [("obstore", "upload", "obstore"), ("obstore", "download", "obstore")]
        for kind, what, home in phases:
            result = _child(kind, what, work / home, endpoint, source, sha)
            print(
                f"{kind:7} {what:8} {args.mib} MiB in {result['seconds']:6.2f} s = {result['mb_s']:7.1f} MiB/s, "
                f"peak RSS {result['peak_mib']:6.1f} MiB (+{result['peak_mib'] - result['before_mib']:.1f} "
                "over its start)",
                flush=True,
            )
    finally:
        moto.terminate()
        moto.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
