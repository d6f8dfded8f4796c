"""Runners on machines that share nothing but PostgreSQL and an S3 bucket (moto's server over HTTP).

Three `preftune runner` processes, each with its own PREFTUNE_HOME (its own disk), and one API server
with another: eight small jobs each complete exactly once; a runner SIGKILLed mid-job loses it to
another runner, which resumes from the checkpoint it finds in the bucket; the API server, restarted
in the middle, then serves every job's adapter and checkpoints, and chats with a fine-tuned model,
all fetched from the bucket."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import s3
from helpers.data import first_lines
from helpers.postgres import create_database
from helpers.server import ServeProcess, child_env, preftune_command

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

MODEL = "tiny-llama"
SMALL = {"batch_size": 2, "max_length": 64, "lora_r": 4, "lora_alpha": 8, "max_steps": 2, "n_checkpoints": 1}
# 16 pairs, 2 a step: 12 steps over two epochs, checkpoints at 3, 6, 9 and 12.
LONG = SMALL | {"n_epochs": 2, "max_steps": 12, "n_checkpoints": 4}


def _events(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    events = api.get(f"/fine-tunes/{job_id}/events", params={"limit": 1000}).json()["data"]
    return list(events)


def _start_runner(home: Path, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = home.with_name(f"{name}.log").open("ab")
    return subprocess.Popen(
        preftune_command("runner", "--id", name),
        env=child_env(home, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: the SIGKILL takes its training process too
    )


def test_three_runners_eight_jobs_a_killed_runner_and_a_restarted_api(
    tmp_path: Path,
    s3_server: str,
    s3_bucket: str,
    postgres_server: str,
    tiny_model_dir: Path,
    orca_path: Path,
) -> None:
    shared = s3.s3_env(s3_server, s3_bucket) | {"PREFTUNE_DATABASE_URL": create_database(postgres_server)}
    # A short lease: a dead runner's job is claimed again within seconds.
    runner_env = shared | {"PREFTUNE_LEASE_SECONDS": "6", "PREFTUNE_HEARTBEAT_SECONDS": "1"}
    api_home = tmp_path / "api"
    # Imported on the API machine with the bucket set: the base model goes to the bucket too, and the
    # runners fetch it from there (their homes start empty).
    imported = subprocess.run(
        preftune_command("models", "import", str(tiny_model_dir), "--as", MODEL, "--json"),
        env=child_env(api_home, **shared),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0 and '"published": true' in imported.stdout, (
        imported.stdout + imported.stderr
    )
    server = ServeProcess(home=api_home, workers=0, env=shared)
    server.start()
    runners: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with server.api() as api:
            data = first_lines(orca_path, tmp_path / "orca-16.jsonl", 16)
            file_id = api.post("/files", files={"file": ("orca.jsonl", data.read_bytes())}).json()["id"]
            victim = api.post("/fine-tunes", json={"training_file": file_id, "model": MODEL, **LONG}).json()[
                "id"
            ]
            others = [
                api.post(
                    "/fine-tunes", json={"training_file": file_id, "model": MODEL, **SMALL, "seed": i}
                ).json()["id"]
                for i in range(7)
            ]
        jobs = [victim, *others]

        for name in ("r0", "r1", "r2"):
            runners[name] = _start_runner(tmp_path / name, name, runner_env)

        # Kill the victim's runner (and its training process) right after the first checkpoint.
        deadline = time.monotonic() + 400
        with server.api() as api:
            while not any(e["type"] == "CHECKPOINT_SAVE" for e in _events(api, victim)):
                assert time.monotonic() < deadline, "the long job saved no checkpoint in time"
                assert all(r.poll() is None for r in runners.values()), "a runner exited on its own"
                time.sleep(0.2)
            start = next(e for e in _events(api, victim) if e["type"] == "JOB_START")
            doomed = start["data"]["runner_id"]
            os.killpg(runners[doomed].pid, signal.SIGKILL)
            runners[doomed].wait()
            assert api.get(f"/fine-tunes/{victim}").json()["status"] == "running"

        server.restart()  # the API server goes away and comes back in the middle of it all

        deadline = time.monotonic() + 600
        with server.api() as api:
            while True:
                states = {j: api.get(f"/fine-tunes/{j}").json()["status"] for j in jobs}
                if all(s in ("completed", "error", "user_error", "cancelled") for s in states.values()):
                    break
                assert time.monotonic() < deadline, f"jobs did not finish: {states}"
                time.sleep(1)
            assert set(states.values()) == {"completed"}, states

            for job_id in jobs:
                events = _events(api, job_id)
                kinds = [e["type"] for e in events]
                assert kinds.count("JOB_COMPLETE") == 1 and kinds.count("MODEL_REGISTERED") == 1, kinds
                steps = [c["step"] for c in api.get(f"/fine-tunes/{job_id}/checkpoints").json()["data"]]
                assert sorted(steps) == ([3, 6, 9, 12] if job_id == victim else [2]), (job_id, steps)
                adapter = api.get(f"/fine-tunes/{job_id}/download", params={"artifact": "adapter"})
                assert adapter.status_code == 200, adapter.text
                with tarfile.open(fileobj=io.BytesIO(adapter.content)) as tar:
                    names = tar.getnames()
                assert any(n.endswith("adapter_model.safetensors") for n in names), names

            events = _events(api, victim)
            restarted = [e for e in events if e["type"] == "JOB_RESTARTED"]
            assert len(restarted) == 1, [e["type"] for e in events]
            resume_step = restarted[0]["data"]["resume_step"]
            assert resume_step >= 3 and restarted[0]["data"]["runner_id"] != doomed
            # The rescuer's disk never held the checkpoint: the trainer resumed from the bucket's copy.
            starts = [e["data"]["start_step"] for e in events if e["type"] == "TRAINING_START"]
            assert starts[-1] == resume_step, starts
            # The checkpoint the dead runner wrote, served by the restarted API from the bucket.
            first = api.get(f"/fine-tunes/{victim}/download", params={"artifact": "checkpoint", "step": 3})
            assert first.status_code == 200, first.text
            assert len(api.get("/files").json()["data"]) == 1
            models = [m["id"] for m in api.get("/models").json()["data"] if m["id"].startswith("ft:")]
            assert len(models) == len(jobs)
            # Chat with a model trained on another machine: its adapter comes from the bucket.
            name = api.get(f"/fine-tunes/{victim}").json()["output_name"]
            chat = api.post(
                "/chat/completions",
                json={"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            )
            assert chat.status_code == 200, chat.text
            assert chat.json()["model"] == name

        assert (tmp_path / "r1" / "models" / MODEL / "config.json").is_file()  # fetched from the bucket
        keys = s3.list_keys(s3_server, s3_bucket, "pt/jobs/")
        for job_id in jobs:
            assert f"pt/jobs/{job_id}/adapter/.preftune-tree.json" in keys
            assert f"pt/jobs/{job_id}/train.log" in keys
        assert s3.open_uploads(s3_server, s3_bucket) == []
    finally:
        for process in runners.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in runners.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        server.stop()
