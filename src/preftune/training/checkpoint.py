"""Checkpoints: weights, optimizer, scheduler, RNG states and data position, written atomically.

A checkpoint directory `checkpoints/step-N/` is built under a temporary name and renamed into
place, so a process killed at any moment leaves either a complete checkpoint or none. Its weights
are in the usual formats (a PEFT adapter, or a full `save_pretrained` model with the tokenizer),
so a checkpoint is also a valid `from_checkpoint` and can be served as it is.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from preftune.errors import InsufficientStorageError, is_disk_full
from preftune.faults import fault_point
from preftune.training.modeling import Policy

STATE_FILE = "trainer_state.pt"
# `checkpoints/best.json`: the checkpoint with the lowest validation loss (step, eval_loss, path, metrics).
BEST_FILE = "best.json"
STEP_DIR_RE = re.compile(r"^step-(\d+)$")


def _fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every directory, deepest first, `root` last.

    A rename is only as durable as what it names: after a power cut, the renamed directory must not
    hold entries whose data never reached the disk, nor miss entries that did."""
    dirs = [root]
    for path in root.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            dirs.append(path)
        elif path.is_file():
            _fsync_path(path)
    for directory in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        _fsync_path(directory)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success it replaces `final` in one rename.

    The temporary directory is hidden (`.name-…`); its files and directories are fsynced before the
    rename and the parent after it, so a crash or power cut at any moment leaves `final` complete or
    absent (or the old `final`), never partly written. On an exception (a full disk) the temporary
    directory is removed and `final` is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        fault_point("checkpoint.before_rename")
        if final.exists():
            # A directory cannot be replaced over a non-empty one: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            _fsync_path(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            _fsync_path(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_weights(policy: Policy, directory: Path) -> None:
    """The trainable state in its usual format (adapter or full model), with the tokenizer."""
    model: Any = policy.model
    if policy.lora:
        model.save_pretrained(directory, selected_adapters=["default"])
    else:
        model.save_pretrained(directory, safe_serialization=True)
    policy.tokenizer.save_pretrained(directory)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(policy: Policy, checkpoints_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Write `checkpoints/step-<step>/` with the weights and `state` (optimizer, scheduler, position...)."""
    final = checkpoints_dir / f"step-{step}"
    try:
        with atomic_dir(final) as tmp:
            save_weights(policy, tmp)
            fault_point("checkpoint.after_weights")
            # Through a Python file, so a failed write is an OSError with its errno (ENOSPC).
            with open(tmp / STATE_FILE, "wb") as handle:
                torch.save({**state, "rng": rng_state()}, handle)
    except Exception as exc:
        # safetensors and tokenizers (Rust) report a full disk only in their message: is_disk_full reads both.
        if not is_disk_full(exc):
            raise
        done = list_checkpoints(checkpoints_dir)
        last = f"the last complete one is {done[-1].name}" if done else "there is no complete one yet"
        raise InsufficientStorageError(
            f"the disk is full: the checkpoint at step {step} could not be written under {checkpoints_dir} "
            f"({exc}). Nothing was written under its name; {last}. Free space on that disk: a retry "
            "resumes from the last complete checkpoint",
            code="insufficient_storage",
        ) from exc
    fault_point("checkpoint.after_rename")
    return final


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        match = STEP_DIR_RE.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def load_checkpoint(policy: Policy, path: Path) -> dict[str, Any]:
    """Load the weights of `path` into `policy` and return its trainer state (RNG not yet applied)."""
    model: Any = policy.model
    if policy.lora:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(path / "adapter_model.safetensors"), device=str(policy.device))
        result = set_peft_model_state_dict(model, weights, adapter_name="default")
        unexpected = list(getattr(result, "unexpected_keys", None) or [])
        if unexpected:
            raise RuntimeError(f"checkpoint {path} does not match this LoRA setup: {unexpected[:3]}")
    else:
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.load_state_dict(saved.state_dict())
        del saved
    state: dict[str, Any] = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    return state


def read_best(checkpoints_dir: Path) -> dict[str, Any] | None:
    """`best.json` of a run, if it has one and its checkpoint exists."""
    import json

    try:
        best: dict[str, Any] = json.loads((checkpoints_dir / BEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (checkpoints_dir / str(best.get("path", "")) / STATE_FILE).is_file():
        return None
    return best
