"""A job with `resources.processes_per_node = 2` runs as two ranks under torch.distributed's
launcher, or as two Ray Train workers with `resources.launcher: ray`; SIGKILL of one rank fails the
attempt within 60 s (`JOB_RETRY`), and the runner resumes it from its last checkpoint
(`JOB_RESTARTED`) to completion, training no step twice."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from preftune.config import Settings
from preftune.runner.worker import AttemptOutcome, Runner
from preftune.service import jobs as job_service
from preftune.store.db import Database

TOTAL = 60


def _events(db: Database, owner_id: str, job_id: str) -> list[Any]:
    with db.session() as session:
        return job_service.list_events(session, owner_id, job_id, limit=1000).data


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


# How a rank's command line reads: torchrun's launcher spawns them (multiprocessing's spawn_main);
# Ray's raylet, started under the training child, runs them as RayTrainWorker actors.
RANK_MARK = {"torchrun": b"spawn_main", "ray": b"RayTrainWorker"}


def _rank_pids(runner: Runner, launcher: str) -> list[int]:
    """The ranks: the training child's descendants that run a rank, not the launcher's helpers."""
    child = runner.current_child
    assert child is not None and child.pid is not None
    ranks = []
    for pid in _descendants(child.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:  # a helper that ended meanwhile
            continue
        if RANK_MARK[launcher] in cmdline:
            ranks.append(pid)
    return sorted(ranks)


def _run_until_done(runner: Runner, outcomes: list[AttemptOutcome], deadline: float) -> None:
    while time.monotonic() < deadline:
        outcome = runner.run_once()
        if outcome is None:
            time.sleep(0.2)
            continue
        outcomes.append(outcome)
        if outcome.kind != "retry":
            return


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks through /proc (Linux)")
@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        "torchrun",
        pytest.param(
            "ray", marks=pytest.mark.skipif(not find_spec("ray"), reason="the ray extra is not installed")
        ),
    ],
)
def test_a_killed_rank_fails_the_attempt_and_the_job_resumes(
    db: Database,
    settings: Settings,
    owner_id: str,
    orca_file_id: str,
    tiny_model_dir: Path,
    launcher: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray per attempt, never the caller's
    monkeypatch.setenv("RAY_DISABLE_USAGE_STATS", "1")
    with db.session() as session:
        job_id = job_service.create_job(
            session,
            owner_id,
            model=str(tiny_model_dir),
            training_file=orca_file_id,
            settings=settings,
            params={"batch_size": 2, "max_length": 48, "n_epochs": 8, "max_steps": TOTAL, "n_checkpoints": 6},
            resources={"processes_per_node": 2, "launcher": launcher},
        ).id
        assert job_service.get_job(session, owner_id, job_id).resources == {
            "processes_per_node": 2,
            "nodes": 1,
            "launcher": launcher,
            "strategy": "auto",
        }
    runner = Runner(settings, db=db, runner_id="r")
    outcomes: list[AttemptOutcome] = []
    thread = threading.Thread(target=_run_until_done, args=(runner, outcomes, time.monotonic() + 600))
    thread.start()
    try:
        deadline = time.monotonic() + 400
        while not any(e.type == "CHECKPOINT_SAVE" for e in _events(db, owner_id, job_id)):
            assert thread.is_alive() and time.monotonic() < deadline, "no checkpoint saved in time"
            time.sleep(0.05)
        ranks = _rank_pids(runner, launcher)
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGKILL)
        killed = time.monotonic()
        while not any(e.type == "JOB_RETRY" for e in _events(db, owner_id, job_id)):
            assert time.monotonic() - killed < 60, "the dead rank did not fail the attempt within 60 s"
            time.sleep(0.1)
    finally:
        thread.join(600)
    assert [o.kind for o in outcomes] == ["retry", "completed"]

    events = _events(db, owner_id, job_id)
    types = [e.type for e in events]
    assert types.count("JOB_RESTARTED") == 1 and types[-1] == "JOB_COMPLETE"
    resume_step = events[types.index("JOB_RESTARTED")].data["resume_step"]
    assert resume_step and resume_step % 10 == 0
    starts = [e.data for e in events if e.type == "TRAINING_START"]
    assert [s["world_size"] for s in starts] == [2, 2] and starts[1]["start_step"] == resume_step
    lines = [json.loads(x) for x in (settings.jobs_dir / job_id / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"] == list(range(1, TOTAL + 1))
    with db.session() as session:
        job = job_service.get_job(session, owner_id, job_id)
        assert job.status == "completed" and job.attempts == 2
