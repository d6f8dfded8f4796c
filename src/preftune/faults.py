"""Named fault points: a process dies at an exact place in its work, only when a test asks for it.

The crash tests need a process killed *inside* a write (a checkpoint half-built), which no timing of
an outside `kill` can hit reliably. Code that writes something it must never leave half-done calls
`fault_point("name")` at the places where dying is most damaging. Nothing happens unless the
environment variable `PREFTUNE_FAULT_POINTS` names that point:

    PREFTUNE_FAULT_POINTS="checkpoint.after_weights:kill@2"

is a comma-separated list of `point:action[@n]`: the action runs at the `n`-th time (default the
first) this process reaches the point. Actions:

- `kill`: SIGKILL this process (a trainer dying, the OOM killer);
- `kill-group`: SIGKILL this process's whole process group (the server, its runners and their
  trainers at once: a power cut);
- `stop`: SIGSTOP this process, so a test can change the world at that exact point (fill the disk)
  and then let it go on with SIGCONT. The line it prints first names the pid.

The variable is read here rather than through `config.Settings` on purpose: a fault point sits deep
in code that gets no settings (the trainer's checkpoint writer runs in a spawned child), and the
variable reaches every child process as it is. A point or action not listed below is an error, so a
test cannot pass by naming a point that does not exist. Unset (always, outside the tests), a fault
point costs one environment lookup.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from dataclasses import dataclass

ENV_VAR = "PREFTUNE_FAULT_POINTS"

# Every fault point in the code, and where it is.
POINTS = {
    "checkpoint.after_weights": "training.checkpoint.save_checkpoint: weights written, trainer state not yet",
    "checkpoint.before_rename": "training.checkpoint.atomic_dir: all written and fsynced, not yet renamed",
    "checkpoint.after_rename": "training.checkpoint.save_checkpoint: the checkpoint is in place",
}
ACTIONS = ("kill", "kill-group", "stop")

_hits: Counter[str] = Counter()


@dataclass(frozen=True)
class Fault:
    point: str
    action: str
    at_hit: int = 1


def parse(spec: str) -> list[Fault]:
    """The faults a `PREFTUNE_FAULT_POINTS` value asks for; raises `ValueError` on a typo."""
    faults = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        point, sep, rest = item.partition(":")
        action, _, count = rest.partition("@")
        if not sep or point not in POINTS or action not in ACTIONS:
            raise ValueError(
                f"{ENV_VAR}: {item!r} is not point:action[@n] with a point of {sorted(POINTS)} "
                f"and an action of {list(ACTIONS)}"
            )
        if count and (not count.isdigit() or int(count) < 1):
            raise ValueError(f"{ENV_VAR}: {item!r}: @n must be a positive integer")
        faults.append(Fault(point, action, int(count) if count else 1))
    return faults


def fault_point(name: str) -> None:
    """Run the fault the environment asks for at `name` (see the module's docstring); else nothing."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    if name not in POINTS:
        raise ValueError(f"fault point {name!r} is not registered in preftune.faults.POINTS")
    _hits[name] += 1
    for fault in parse(spec):
        if fault.point == name and fault.at_hit == _hits[name]:
            _fire(fault)


def _fire(fault: Fault) -> None:
    # Say so where a test can read it (the trainer's log), then die without any clean-up running.
    with contextlib.suppress(OSError, ValueError):
        print(
            f"preftune.faults: {fault.action} at {fault.point} (hit {fault.at_hit}) pid {os.getpid()}",
            flush=True,
        )
    if fault.action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    if fault.action == "kill-group":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
