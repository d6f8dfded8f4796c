"""`preftune.faults`: a named fault point kills the process at the n-th hit, and only when asked;
a typo in `PREFTUNE_FAULT_POINTS` is an error, not a test that passes without its fault.
And `training.checkpoint.atomic_dir` leaves nothing behind when the body fails."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preftune.errors import is_disk_full
from preftune.faults import ENV_VAR, Fault, parse
from preftune.training.checkpoint import atomic_dir

HIT_TWICE = (
    "from preftune.faults import fault_point\n"
    "for i in (1, 2, 3):\n"
    "    fault_point('checkpoint.after_weights')\n"
    "    print('passed', i, flush=True)\n"
)


def _run(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if spec is not None:
        env[ENV_VAR] = spec
    return subprocess.run(
        [sys.executable, "-c", HIT_TWICE], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_fault_kills_at_the_nth_hit_and_not_before() -> None:
    killed = _run("checkpoint.before_rename:kill, checkpoint.after_weights:kill@2")
    assert killed.returncode == -signal.SIGKILL, killed
    lines = killed.stdout.splitlines()
    assert lines[0] == "passed 1" and len(lines) == 2, lines
    assert lines[1].startswith("preftune.faults: kill at checkpoint.after_weights (hit 2) pid "), lines


def test_without_the_variable_nothing_happens() -> None:
    assert _run(None).stdout.split("\n")[:3] == ["passed 1", "passed 2", "passed 3"]
    assert _run("").returncode == 0


@pytest.mark.parametrize(
    "spec",
    [
        "checkpoint.after_weight:kill",
        "checkpoint.after_weights:explode",
        "checkpoint.after_weights",
        "x:kill@0",
    ],
)
def test_a_typo_is_an_error(spec: str) -> None:
    with pytest.raises(ValueError, match=ENV_VAR):
        parse(spec)
    assert _run(spec).returncode == 1  # the process fails loudly at the point instead of running on


def test_parse() -> None:
    assert parse("checkpoint.after_weights:kill-group@3,") == [
        Fault("checkpoint.after_weights", "kill-group", 3)
    ]


def test_atomic_dir_leaves_nothing_when_the_write_fails(tmp_path: Path) -> None:
    final = tmp_path / "checkpoints" / "step-2"
    final.mkdir(parents=True)
    (final / "old").write_text("complete")
    with pytest.raises(OSError), atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-2"]
    assert [p.name for p in final.iterdir()] == ["old"]
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("complete")
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-2"]
    assert [p.name for p in final.iterdir()] == ["new"]


def test_is_disk_full_reads_errnos_causes_and_library_messages() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # safetensors (Rust) and SQLite drop the errno; torch.save wraps it.
    assert is_disk_full(
        Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    )
    assert is_disk_full(Exception("(sqlite3.OperationalError) database or disk is full"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
            ) from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("CUDA out of memory"))


def test_stop_pauses_the_process_until_sigcont() -> None:
    env = {**os.environ, ENV_VAR: "checkpoint.after_weights:stop@2"}
    child = subprocess.Popen([sys.executable, "-c", HIT_TWICE], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "passed 1\n"
    line = child.stdout.readline()
    assert line.startswith("preftune.faults: stop at checkpoint.after_weights (hit 2) pid "), line
    pid = int(line.split()[-1])
    assert pid == child.pid
    # The process is stopped ('T') until it gets SIGCONT, then runs to its end.
    deadline = 100
    while Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "T" and deadline:
        deadline -= 1
        time.sleep(0.05)
    assert deadline, "the process did not stop"
    os.kill(pid, signal.SIGCONT)
    out, _ = child.communicate(timeout=60)
    assert out.splitlines() == ["passed 2", "passed 3"] and child.returncode == 0
