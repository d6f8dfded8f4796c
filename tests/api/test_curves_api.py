"""`/v1/fine-tunes/{id}/curves.png`: drawn from the stored metric lines while a job runs, owned by its owner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from preftune.contracts.curves import render_curves
from preftune.service import runs

GOOD = {
    "input": {"messages": [{"role": "user", "content": "Say hi."}]},
    "preferred_output": [{"role": "assistant", "content": "Hi!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}
PNG = b"\x89PNG\r\n\x1a\n"


def test_a_job_s_curves_are_a_png_for_its_owner_only(api: Any, tiny_model_dir: Path) -> None:
    content = ("\n".join(json.dumps(GOOD) for _ in range(4)) + "\n").encode()
    uploaded = api.client.post(
        "/v1/files", files={"file": ("d.jsonl", content, "application/jsonl")}, headers=api.headers()
    ).json()
    job = api.client.post(
        "/v1/fine-tunes",
        json={"training_file": uploaded["id"], "model": str(tiny_model_dir)},
        headers=api.headers(),
    ).json()
    empty = api.client.get(f"/v1/fine-tunes/{job['id']}/curves.png", headers=api.headers())
    assert empty.status_code == 200 and empty.headers["content-type"] == "image/png"
    assert empty.content.startswith(PNG)
    # Once a runner holds the job and reports steps, the picture is drawn from them.
    with api.client.app.state.db.session() as session:  # type: ignore[attr-defined]
        claimed = runs.claim_job(session, "test-runner", api.settings, api.client.app.state.blobs)  # type: ignore[attr-defined]
        assert claimed is not None
        for step, split in ((1, "train"), (2, "train"), (2, "eval")):
            runs.record_step(
                session,
                job["id"],
                claimed.claim_token,
                {"step": step, "split": split, "loss": 0.7 - 0.1 * step, "rewards/accuracies": 0.5},
            )
    drawn = api.client.get(f"/v1/fine-tunes/{job['id']}/curves.png", headers=api.headers())
    assert drawn.status_code == 200 and drawn.content.startswith(PNG) and drawn.content != empty.content
    assert (
        api.client.get(f"/v1/fine-tunes/{job['id']}/curves.png", headers=api.headers(api.key_b)).status_code
        == 404
    )


def test_render_curves_draws_every_panel_with_or_without_data() -> None:
    lines = [{"step": s, "split": "train", "loss": 1 / s, "rewards/margins": 0.1 * s} for s in range(1, 5)]
    assert render_curves(lines).startswith(PNG)
    assert render_curves([], title="nothing yet").startswith(PNG)
