"""Download archives: built once, relative paths, rebuilt when the source changes."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from preftune.api.archive import cached_tar


def test_tar_holds_relative_paths_and_is_reused(tmp_path: Path) -> None:
    source = tmp_path / "adapter"
    (source / "sub").mkdir(parents=True)
    (source / "adapter_config.json").write_text("{}")
    (source / "sub" / "w.bin").write_bytes(b"x" * 1000)
    first = cached_tar(source, tmp_path / "cache", "adapter")
    with tarfile.open(first) as archive:
        assert sorted(archive.getnames()) == ["adapter_config.json", "sub/w.bin"]
    mtime = first.stat().st_mtime_ns
    assert cached_tar(source, tmp_path / "cache", "adapter").stat().st_mtime_ns == mtime

    # A newer file in the source makes a new archive.
    later = first.stat().st_mtime + 10
    (source / "extra.txt").write_text("new")
    os.utime(source / "extra.txt", (later, later))
    rebuilt = cached_tar(source, tmp_path / "cache", "adapter")
    with tarfile.open(rebuilt) as archive:
        assert "extra.txt" in archive.getnames()
    assert not list((tmp_path / "cache").glob("*.tmp"))
