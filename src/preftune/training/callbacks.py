"""`TrainCallbacks`: how a caller (the job runner, `preftune train`) watches and stops a run.

Every method is optional: subclass and override what you need. The trainer calls them
from the training process itself, so they should return quickly (queue the data, do
not block on the network).
"""

from __future__ import annotations

from typing import Any

# Event types passed to `on_event`.
TRAINING_START = "TRAINING_START"
CHECKPOINT_SAVE = "CHECKPOINT_SAVE"
EPOCH_COMPLETE = "EPOCH_COMPLETE"
EVAL = "EVAL"
TRAINING_COMPLETE = "TRAINING_COMPLETE"
EARLY_STOP = "EARLY_STOP"
EVENT_TYPES = (TRAINING_START, CHECKPOINT_SAVE, EPOCH_COMPLETE, EVAL, EARLY_STOP, TRAINING_COMPLETE)


class TrainCallbacks:
    """No-op base class: the trainer's hooks for progress, events and cancellation."""

    def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
        """A milestone: one of `EVENT_TYPES`, a sentence for people, and JSON-able details."""

    def on_step(self, metrics: dict[str, Any]) -> None:
        """One optimizer step (or an eval, with `"split": "eval"`): the `metrics.jsonl` line, plus
        `total_steps` and `eta_seconds`."""

    def should_stop(self) -> bool:
        """Polled every micro-step; return True to stop promptly (the result is marked stopped)."""
        return False


class CallbackList(TrainCallbacks):
    """Fans each hook out to several callbacks; stops when any of them asks to."""

    def __init__(self, callbacks: list[TrainCallbacks]) -> None:
        self.callbacks = callbacks

    def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_event(type, message, data)

    def on_step(self, metrics: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_step(metrics)

    def should_stop(self) -> bool:
        return any(callback.should_stop() for callback in self.callbacks)
