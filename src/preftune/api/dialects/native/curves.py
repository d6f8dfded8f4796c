"""`/v1/fine-tunes/{id}/curves.png`: a job's loss, reward accuracy and margin curves (train and eval).

A finished job's `curves.png` (written by the trainer with its outputs) is served as it is; a job
still running is drawn from its stored metric lines at each request.
"""

from __future__ import annotations

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, Response

from preftune.api.deps import CallerDep, SessionDep, SettingsDep
from preftune.contracts.curves import CURVES_FILE, render_curves
from preftune.service import jobs as job_service
from preftune.service.states import TERMINAL

router = APIRouter(tags=["fine-tunes"])


@router.get(
    "/fine-tunes/{job_id}/curves.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The curves as a PNG"}},
    summary="A job's training and eval curves (PNG)",
)
def fine_tune_curves(
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    job_id: str = Path(description="ftjob-… id"),
) -> Response:
    job = job_service.get_job(session, caller.owner_id, job_id)
    written = job_service.job_dir(settings, job.id) / CURVES_FILE
    if job.status in TERMINAL and written.is_file():
        return FileResponse(written, media_type="image/png")
    lines = [
        row.data
        for split in ("train", "eval")
        for row in job_service.list_metric_rows(
            session,
            caller.owner_id,
            job_id,
            split=split,  # type: ignore[arg-type]
        )
    ]
    return Response(
        render_curves(lines, title=job.id), media_type="image/png", headers={"Cache-Control": "no-store"}
    )
