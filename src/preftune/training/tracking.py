"""Weights & Biases tracking: a `TrainCallbacks` that sends each step's metrics to W&B.

The trainer attaches it with `wandb_callbacks(spec, output_dir=..., run_name=...)`, which returns None
when the spec has no `wandb_api_key`. Keys are logged as TRL logs them (`train/loss`,
`train/rewards/chosen`, ..., `eval/...` for evaluations), stepped by the optimizer step, so a preftune run
and a TRL run sit side by side in one W&B workspace. The run's config is `spec.public_dict()`: the API key
is passed to W&B only as a credential, never logged and never written to disk by preftune.

The W&B run id is kept in `output_dir/wandb_run_id`, so a job resumed from a checkpoint continues the same
W&B run instead of starting a new one. A W&B failure (no network, a bad key) never fails training: it is
logged as a warning and tracking turns itself off.
"""

from __future__ import annotations

import logging
import math
import secrets
from pathlib import Path
from typing import Any

from preftune.contracts.spec import TrainingSpec
from preftune.training.callbacks import TRAINING_COMPLETE, TrainCallbacks

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
DEFAULT_PROJECT = "preftune"
# Bookkeeping the metrics line carries that is not a curve worth plotting (the step is W&B's x axis).
NOT_LOGGED = frozenset({"step", "split", "total_steps", "eta_seconds"})


def wandb_keys(metrics: dict[str, Any]) -> dict[str, float]:
    """Map one `metrics.jsonl` line to W&B keys: numbers only, prefixed `train/` or `eval/` like TRL."""
    prefix = "eval/" if metrics.get("split") == "eval" else "train/"
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in NOT_LOGGED or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[key if key.startswith(("train/", "eval/")) else prefix + key] = float(value)
    return out


class WandbTracker(TrainCallbacks):
    """Logs every optimizer step to one W&B run; finishes the run when training completes."""

    def __init__(
        self,
        spec: TrainingSpec,
        *,
        output_dir: Path,
        run_name: str | None = None,
        init_timeout: float = 60.0,
    ) -> None:
        if spec.wandb_api_key is None:
            raise ValueError(
                "WandbTracker needs spec.wandb_api_key; use wandb_callbacks() to skip it when unset"
            )
        self.spec = spec
        self.output_dir = output_dir
        self.run_name = spec.wandb_name or run_name
        self.init_timeout = init_timeout
        self.run: Any = None
        self._failed = False

    @property
    def active(self) -> bool:
        return self.run is not None

    def _run_id(self) -> str:
        """The W&B run id for this output directory: reused on resume, created on first start."""
        path = self.output_dir / RUN_ID_FILE
        if path.is_file():
            stored = path.read_text(encoding="utf-8").strip()
            if stored:
                return stored
        run_id = secrets.token_hex(4)  # W&B ids: short, lowercase, unique per project
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n", encoding="utf-8")
        return run_id

    def start(self) -> None:
        """Open the W&B run (called on the first hook; safe to call again)."""
        if self.run is not None or self._failed:
            return
        assert self.spec.wandb_api_key is not None
        try:
            import wandb

            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=self.spec.wandb_project or DEFAULT_PROJECT,
                name=self.run_name,
                id=self._run_id(),
                resume="allow",
                dir=str(self.output_dir),
                config=self.spec.public_dict(),
                reinit="create_new",
                settings=wandb.Settings(
                    # The key is a credential for this run only: not written to ~/.netrc.
                    api_key=self.spec.wandb_api_key.get_secret_value(),
                    init_timeout=self.init_timeout,
                    # The trainer's stdout is the runner's log; W&B need not wrap it.
                    console="off",
                    silent=True,
                    disable_git=True,
                    save_code=False,
                ),
            )
        except Exception as exc:  # W&B trouble must not fail a training job
            self._failed = True
            self.run = None
            log.warning("Weights & Biases tracking is off for this run: %s", exc)

    def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
        if type == TRAINING_COMPLETE:
            self.finish()
        else:
            self.start()

    def on_step(self, metrics: dict[str, Any]) -> None:
        self.start()
        if self.run is None:
            return
        values = wandb_keys(metrics)
        step = metrics.get("step")
        try:
            if isinstance(step, int) and not isinstance(step, bool):
                # Eval lines share the step of the train step they follow; commit both at that step.
                self.run.log(values, step=step)
            else:
                self.run.log(values)
        except Exception as exc:
            log.warning("Weights & Biases logging failed (tracking stops for this run): %s", exc)
            self.finish(exit_code=1)
            self._failed = True

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (flushes offline data to disk). Call with exit_code=1 when training fails."""
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:
            log.warning("Weights & Biases could not finish the run cleanly: %s", exc)


def wandb_callbacks(
    spec: TrainingSpec, *, output_dir: Path, run_name: str | None = None
) -> WandbTracker | None:
    """A tracker when `spec.wandb_api_key` is set, else None. `run_name` (e.g. the job id) is used when
    `spec.wandb_name` is unset. Combine with other callbacks through `CallbackList`."""
    if spec.wandb_api_key is None:
        return None
    return WandbTracker(spec, output_dir=output_dir, run_name=run_name)
