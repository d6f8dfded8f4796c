"""SIGKILL *inside* a checkpoint write, at a named fault point (`preftune.faults`), on the real server
with a real runner: no half-written checkpoint ever sits under a real name, and the job resumes from
the previous complete checkpoint and completes, training no step twice.

- The trainer alone is killed after the weights are written and before the trainer state: the runner
  sees its child die and retries the job, which resumes from the checkpoint before.
- A power cut: the server, its runner and the trainer are killed at once, after everything of the
  checkpoint is written and fsynced but before the rename. The disk is inspected before the server
  comes back; the restarted server's runner takes the job over once the dead one's lease expires.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.data import first_lines
from helpers.postgres import create_database
from helpers.server import ServeProcess
from preftune.training.checkpoint import STATE_FILE, list_checkpoints

pytestmark = pytest.mark.e2e

# 16 pairs, 2 a step, 6 steps: checkpoints at steps 3 and 6. Every fault below hits the second one.
STEPS = 6
JOB = {
    "batch_size": 2,
    "max_length": 96,
    "lora_r": 4,
    "lora_alpha": 8,
    "max_steps": STEPS,
    "n_checkpoints": 2,
}


def _start_job(server: ServeProcess, orca_16: Path, model: Path) -> tuple[httpx.Client, str]:
    http = server.api()
    with orca_16.open("rb") as handle:
        file = http.post("/files", files={"file": ("orca.jsonl", handle)}).json()
    job = http.post("/fine-tunes", json={"training_file": file["id"], "model": str(model), **JOB})
    assert job.status_code == 200, job.text
    return http, job.json()["id"]


def _events(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/fine-tunes/{job_id}/events", params={"limit": 1000}).json()["data"])


def _wait_for_status(http: httpx.Client, job_id: str, status: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/fine-tunes/{job_id}").json()
        if job["status"] == status:
            return dict(job)
        assert job["status"] not in ("error", "user_error", "cancelled"), job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout}s"
        time.sleep(0.3)


def _assert_resumed_and_complete(http: httpx.Client, job_dir: Path, job_id: str) -> list[dict[str, Any]]:
    """The job resumed from step 3 (the checkpoint before the killed write) and trained every step once."""
    events = _events(http, job_id)
    types = [e["type"] for e in events]
    assert types.count("JOB_RESTARTED") == 1 and types[-1] == "JOB_COMPLETE", types
    restarted = events[types.index("JOB_RESTARTED")]
    assert restarted["data"]["resume_step"] == 3, restarted
    starts = [e for e in events if e["type"] == "TRAINING_START"]
    assert [s["data"]["start_step"] for s in starts] == [0, 3], starts
    steps = [
        json.loads(line)["step"]
        for line in (job_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line).get("split", "train") == "train"
    ]
    assert steps == list(range(1, STEPS + 1))
    served = http.get(f"/fine-tunes/{job_id}/metrics", params={"split": "train"}).json()["data"]
    assert [m["step"] for m in served] == list(range(1, STEPS + 1))
    checkpoints = http.get(f"/fine-tunes/{job_id}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints] == [3, STEPS]
    # Every checkpoint under a real name is complete; nothing hidden is left behind.
    ckpt_dir = job_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-3", f"step-{STEPS}"]
    for path in list_checkpoints(ckpt_dir):
        assert (path / STATE_FILE).is_file() and (path / "adapter_model.safetensors").is_file(), path
    return events


@pytest.fixture
def orca_16(orca_path: Path, tmp_path: Path) -> Path:
    return first_lines(orca_path, tmp_path / "orca-16.jsonl", 16)


@pytest.mark.slow
def test_trainer_killed_inside_a_checkpoint_write_resumes_from_the_previous_checkpoint(
    tmp_path: Path, orca_16: Path, tiny_model_dir: Path
) -> None:
    server = ServeProcess(
        home=tmp_path / "home", workers=1, env={"PREFTUNE_FAULT_POINTS": "checkpoint.after_weights:kill@2"}
    )
    server.start()
    try:
        http, job_id = _start_job(server, orca_16, tiny_model_dir)
        job = _wait_for_status(http, job_id, "completed")
        job_dir = server.home / "jobs" / job_id
        log = (job_dir / "train.log").read_text()
        # The first attempt died inside the write of step 6, the second wrote it (its own first hit).
        assert log.count("preftune.faults: kill at checkpoint.after_weights (hit 2) pid") == 1, log[-2000:]
        assert job["attempts"] == 2
        events = _assert_resumed_and_complete(http, job_dir, job_id)
        retry = next(e for e in events if e["type"] == "JOB_RETRY")
        assert retry["data"]["code"] == "training_crashed", retry
        assert http.get(f"/fine-tunes/{job_id}/download").status_code == 200
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "postgres":
        return {"PREFTUNE_DATABASE_URL": create_database(request.getfixturevalue("postgres_server"))}
    return {}


# Two server starts, a lease to expire and two trainings (~60 s on a shared 2-core machine): out of `make test-fast`.
@pytest.mark.slow
def test_power_cut_inside_a_checkpoint_write_leaves_no_checkpoint_under_its_name(
    tmp_path: Path, orca_16: Path, tiny_model_dir: Path, database_env: dict[str, str]
) -> None:
    # A short lease: the restarted server's runner takes over the dead one's job within seconds.
    fault = {"PREFTUNE_FAULT_POINTS": "checkpoint.before_rename:kill-group@2"}
    env = {**database_env, "PREFTUNE_LEASE_SECONDS": "4", "PREFTUNE_HEARTBEAT_SECONDS": "1"}
    server = ServeProcess(home=tmp_path / "home", workers=1, env={**env, **fault})
    server.start()
    try:
        http, job_id = _start_job(server, orca_16, tiny_model_dir)
        assert server.process is not None
        server.process.wait(timeout=600)  # the fault kills the whole process group
        job_dir = server.home / "jobs" / job_id
        assert (
            "preftune.faults: kill-group at checkpoint.before_rename (hit 2)"
            in (job_dir / "train.log").read_text()
        )

        # What the power cut left: step 3 complete, step 6 only under a hidden temporary name.
        ckpt_dir = job_dir / "checkpoints"
        names = sorted(p.name for p in ckpt_dir.iterdir())
        assert names[0] == ".step-6-" or names[0].startswith(".step-6-"), names
        assert names[1:] == ["step-3"], names
        assert (ckpt_dir / names[0] / STATE_FILE).is_file()  # written in full, only not renamed
        assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-3"]

        server.env = env  # back without the fault
        server.restart()
        http = server.api()
        _wait_for_status(http, job_id, "completed")
        _assert_resumed_and_complete(http, job_dir, job_id)
    finally:
        server.stop()
