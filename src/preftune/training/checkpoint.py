"""Checkpoints: weights, optimizer, scheduler, RNG states and data position, written atomically.

A checkpoint directory `checkpoints/step-N/` is built under a temporary name and renamed into
place, so a process killed at any moment leaves either a complete checkpoint or none. Its weights
are in the usual formats (a PEFT adapter, or a full `save_pretrained` model with the tokenizer),
so a checkpoint is also a valid `from_checkpoint` and can be served as it is.

The trainable weights and the optimizer state are also in `dcp/`, a `torch.distributed.checkpoint`
(DCP) checkpoint: each rank writes its own shard (FSDP) or the replicated tensors once (DDP), keyed
by parameter name, so a run resumes on any world size (saved on 2 processes, resumed on 1, or the
other way round). With several processes every rank writes into the same temporary directory
(rank 0 names it) and rank 0 renames it after a barrier: the output directory must be on a
filesystem every node sees.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from preftune.errors import InsufficientStorageError, is_disk_full
from preftune.faults import fault_point
from preftune.training.distributed import Group
from preftune.training.modeling import Policy

STATE_FILE = "trainer_state.pt"
# `checkpoints/best.json`: the checkpoint with the lowest validation loss (step, eval_loss, path, metrics).
BEST_FILE = "best.json"
DCP_DIR = "dcp"
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


def _temporary_sibling(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


def _commit(tmp: Path, final: Path) -> None:
    """fsync everything under `tmp`, then make it `final` in one rename (and fsync the parent)."""
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


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success it replaces `final` in one rename.

    The temporary directory is hidden (`.name-…`); its files and directories are fsynced before the
    rename and the parent after it, so a crash or power cut at any moment leaves `final` complete or
    absent (or the old `final`), never partly written. On an exception (a full disk) the temporary
    directory is removed and `final` is untouched."""
    tmp = _temporary_sibling(final)
    try:
        yield tmp
        _commit(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_weights(policy: Policy, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """The trainable state in its usual format (adapter or full model), with the tokenizer.

    `state_dict`: the whole model's weights when the model in memory holds only a shard (FSDP)."""
    model: Any = policy.model
    if policy.lora:
        # A sharded LoRA run (FSDP) passes the gathered adapter weights; PEFT keeps its own keys.
        model.save_pretrained(directory, selected_adapters=["default"], state_dict=state_dict)
    else:
        if state_dict is not None:
            # A gathered state dict holds a tied weight (the head, the embeddings) under both names.
            unique = {name for name, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
            state_dict = {k: v for k, v in state_dict.items() if k in unique}
        model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
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


def _dcp_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False)


def trainable_state(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The trainable weights and optimizer state, keyed by parameter name (sharded under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model, options=_dcp_options())
    # ignore_frozen_params keeps a tied frozen weight under its second name (a LoRA run's lm_head,
    # tied to the embeddings): every checkpoint would carry the vocabulary matrix. Frozen is frozen.
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {
        "model": {name: value for name, value in weights.items() if name not in frozen},
        "optim": get_optimizer_state_dict(model, optimizer, options=_dcp_options()),
    }


class _WriteErrorsKept:
    """A DCP stream that remembers the OSError of a failed write before it is lost.

    DCP runs each rank's writes inside its own error collection and re-raises a
    `CheckpointException` that carries only the failures' text, and `torch.save` into a Python
    stream reports a short write as "unexpected pos N vs M": without this, a full disk under DCP
    is indistinguishable from any other failure."""

    def __init__(self, stream: Any, errors: list[OSError]) -> None:
        self._stream = stream
        self._errors = errors

    def write(self, data: Any) -> int:
        try:
            written: int = self._stream.write(data)
        except OSError as exc:
            self._errors.append(exc)
            raise
        return written

    def __getattr__(self, name: str) -> Any:  # tell, flush, fileno, close: the real stream's
        return getattr(self._stream, name)


def _dcp_writer(path: Path) -> tuple[Any, list[OSError]]:
    """DCP's file-system writer for `path`, and the list its failed writes' OSErrors land in."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import FileSystem

    errors: list[OSError] = []

    class _FileSystem(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
            with super().create_stream(path, mode) as stream:
                yield _WriteErrorsKept(stream, errors) if "w" in mode else stream

    writer = FileSystemWriter(path)
    writer.fs = _FileSystem()
    return writer, errors


def save_checkpoint(
    policy: Policy,
    checkpoints_dir: Path,
    step: int,
    state: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer,
    group: Group,
    full_state_dict: Callable[[], dict[str, torch.Tensor] | None],
) -> Path:
    """Write `checkpoints/step-<step>/`: DCP shards from every rank, then from rank 0 the weights
    in their usual format and `state` (scheduler, position, totals). Every rank calls it."""
    import torch.distributed.checkpoint as dcp

    final = checkpoints_dir / f"step-{step}"
    tmp = Path(group.broadcast(str(_temporary_sibling(final)) if group.is_main else None))
    writer, write_errors = _dcp_writer(tmp / DCP_DIR)
    try:
        dcp.save(trainable_state(policy.model, optimizer), storage_writer=writer)
        weights = full_state_dict()  # a collective under FSDP
        if group.is_main:
            save_weights(policy, tmp, weights)
            fault_point("checkpoint.after_weights")
            # Through a Python file, so a failed write is an OSError with its errno (ENOSPC).
            with open(tmp / STATE_FILE, "wb") as handle:
                torch.save({**state, "rng": rng_state()}, handle)
        group.barrier()  # every shard is written
        if group.is_main:
            _commit(tmp, final)
        group.barrier()  # the step directory is in place for everyone
    except BaseException as exc:  # DCP's CheckpointException is a BaseException, not an Exception
        # DCP's failed writes keep their OSError in write_errors; safetensors and tokenizers (Rust)
        # report a full disk only in their message: is_disk_full reads errno and message.
        if not (is_disk_full(exc) or any(is_disk_full(error) for error in write_errors)):
            raise
        done = list_checkpoints(checkpoints_dir)
        last = f"the last complete one is {done[-1].name}" if done else "there is no complete one yet"
        raise InsufficientStorageError(
            f"the disk is full: the checkpoint at step {step} could not be written under {checkpoints_dir} "
            f"({exc}). Nothing was written under its name; {last}. Free space on that disk: a retry "
            "resumes from the last complete checkpoint",
            code="insufficient_storage",
        ) from exc
    finally:
        if group.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
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


def _load_dcp(model: Any, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Resharded to this run's world size by DCP; every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = trainable_state(model, optimizer)
    dcp.load(state, checkpoint_id=directory)
    result = set_model_state_dict(model, state["model"], options=_dcp_options())
    if result.unexpected_keys:
        raise RuntimeError(f"checkpoint {directory} does not match this model: {result.unexpected_keys[:3]}")
    set_optimizer_state_dict(model, optimizer, state["optim"], options=_dcp_options())


def load_checkpoint(policy: Policy, path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load the weights and optimizer state of `path` into `policy` and `optimizer`; return the
    trainer state (RNG not yet applied). Checkpoints from before DCP load as they were written."""
    if (path / DCP_DIR).is_dir():
        _load_dcp(policy.model, optimizer, path / DCP_DIR)
        state: dict[str, Any] = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        return state
    _load_weights(policy, path)
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    return state


def _load_weights(policy: Policy, path: Path) -> None:
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
