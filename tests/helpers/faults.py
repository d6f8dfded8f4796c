"""A small disk for the disk-full tests: a size-limited tmpfs mounted over a directory, and a filler.

`small_disk(path, size)` mounts a tmpfs of `size` bytes at `path` (made if missing) for the `with`
block and unmounts it afterwards. Mounting needs `mount` and root (CAP_SYS_ADMIN, or password-less
sudo): where that is impossible the test skips locally and fails under `CI=true`
(`helpers.infra.require`), so CI cannot pass without running it (.ci/run installs `mount`).

`fill_disk(path, leave)` writes a filler file until the disk is full, then gives back `leave` bytes,
and returns the filler (delete it to free the space again).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers.infra import require

MiB = 1024 * 1024


@contextmanager
def small_disk(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `path` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    mount, umount = shutil.which("mount"), shutil.which("umount")
    require(
        mount and umount, "the disk-full tests need mount(8) and umount(8) (Debian: apt-get install mount)"
    )
    assert mount and umount
    # Not root: password-less sudo will do (the mount then belongs to this user).
    sudo = [] if os.geteuid() == 0 or not shutil.which("sudo") else ["sudo", "-n"]
    options = f"size={size},mode=0755,uid={os.getuid()},gid={os.getgid()}"
    done = subprocess.run(
        [*sudo, mount, "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    require(
        done.returncode == 0,
        "the disk-full tests mount a small tmpfs, which needs root, CAP_SYS_ADMIN or password-less sudo: "
        + done.stderr.strip(),
    )
    try:
        yield path
    finally:
        # A process still holding a file there (a server being killed) must not make the test fail here.
        if subprocess.run([*sudo, umount, str(path)], capture_output=True).returncode != 0:
            subprocess.run([*sudo, umount, "-l", str(path)], check=True)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill_disk(path: Path, leave: int = 0, name: str = ".filler") -> Path:
    """Fill the disk under `path` with a file, then free `leave` bytes of it; returns the file."""
    filler = path / name
    block = b"\0" * MiB
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        # A partial last block may be left out by the kernel: write the rest page by page.
        try:
            while True:
                handle.write(block[:4096])
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        written = handle.seek(0, os.SEEK_END)
        handle.truncate(max(written - leave, 0))
    return filler
