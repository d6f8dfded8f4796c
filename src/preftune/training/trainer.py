"""`train()`: one local training run from a spec, a model and a data file to an output directory.

The loop, step by step: take the step's examples (seeded, length-grouped order), split them into
micro-batches, pack each into prefix-shared rows, compute policy log-probs (and the reference's:
LoRA adapters switched off on the same rows, or the cache for full fine-tuning), call the loss,
backpropagate with each micro-batch weighted by its share of the step, clip, step, log, and now
and then evaluate and checkpoint. `should_stop()` is polled before every micro-batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from preftune.contracts.base_models import resolve_model
from preftune.contracts.curves import CURVES_FILE, write_curves
from preftune.contracts.spec import TrainingSpec
from preftune.errors import (
    InsufficientStorageError,
    InvalidRequestError,
    PreftuneError,
    TrainingError,
    TrainingSpecError,
    is_disk_full,
)
from preftune.kernels.allocator import keep_freed_memory
from preftune.training import callbacks as events
from preftune.training.callbacks import CallbackList, TrainCallbacks
from preftune.training.checkpoint import (
    BEST_FILE,
    list_checkpoints,
    load_checkpoint,
    read_best,
    save_checkpoint,
    set_rng_state,
)
from preftune.training.dataset import TokenizedData, check_file, tokenize_file
from preftune.training.distributed import (
    Group,
    Launch,
    agreed,
    choose_strategy,
    rank_passes,
    reduce_totals,
)
from preftune.training.distributed import start as start_group
from preftune.training.distributed import stop as stop_group
from preftune.training.evaluation import EVAL_FILE, clean, evaluate_examples
from preftune.training.flops import (
    Peak,
    block_matmul_params,
    device_peak_flops,
    logit_tokens,
    mfu,
    model_flops,
)
from preftune.training.losses import ExampleLogps, LossTerms, SequenceLogps, loss_for, step_normalisers
from preftune.training.memory import MemoryPlan, plan_memory
from preftune.training.modeling import (
    Policy,
    enable_gradient_checkpointing,
    load_policy,
    reference_mode,
    select_device,
    set_threads,
)
from preftune.training.outputs import (
    METRICS_FILE,
    MetricsLog,
    write_final_weights,
    write_merged,
    write_report,
    write_text_atomic,
)
from preftune.training.packing import PackedBatch, pack
from preftune.training.result import TrainResult
from preftune.training.sampling import epoch_steps, steps_per_epoch
from preftune.training.schedule import build_scheduler
from preftune.training.step import StepTotals, Stopped, accumulate, clip_and_step
from preftune.training.tracking import wandb_callbacks

REFERENCE_CACHE = "reference_logps.pt"
# Take the first step's reference log-probs from the policy itself (see `_Run._loss`); tests turn
# it off to check the shortcut changes nothing.
REUSE_POLICY_AS_REFERENCE = True


def train(
    spec: TrainingSpec,
    *,
    model: str,
    training_file: Path,
    output_dir: Path,
    validation_file: Path | None = None,
    models_dir: Path,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
    device: str = "auto",
    launch: Launch | None = None,
    peak_flops: float | None = None,
) -> TrainResult:
    """Train `model` on `training_file` as `spec` says; write outputs to `output_dir`.

    `device` is the `device` setting (auto, cpu, cuda, cuda:N); `launch` says which process of a
    torchrun/Ray launch this is (`training.distributed`): every rank calls `train` alike, rank 0
    alone writes metrics, events and final weights, and the other ranks' `callbacks` are not
    called. `peak_flops` is one device's peak FLOP/s for the metrics' `mfu` (`training.flops`; by
    default a datasheet number for known GPUs, else a short measured matmul). User errors raise
    `DataValidationError`, `TrainingSpecError`, `ModelNotFoundError` or `InvalidRequestError`;
    anything else that goes wrong raises `TrainingError`.
    """
    if peak_flops is not None and not peak_flops > 0:
        raise InvalidRequestError(
            f"peak_flops must be a positive FLOP/s figure (one device's peak), got {peak_flops!r}",
            param="peak_flops",
        )
    launch = launch or Launch()
    hooks = callbacks or TrainCallbacks()
    tracker = wandb_callbacks(spec, output_dir=Path(output_dir)) if launch.rank == 0 else None
    if tracker is not None:
        hooks = CallbackList([hooks, tracker])
    if launch.rank != 0:
        hooks = _StopOnly(hooks)
    run = _Run(
        spec,
        model,
        Path(training_file),
        Path(output_dir),
        Path(validation_file) if validation_file else None,
        Path(models_dir),
        resume,
        hooks,
        device,
        launch,
        peak_flops,
    )
    try:
        result = run.execute()
    except BaseException as exc:
        if tracker is not None:
            tracker.finish(exit_code=1)
        if isinstance(exc, PreftuneError | KeyboardInterrupt | SystemExit):
            raise
        if is_disk_full(exc):
            raise InsufficientStorageError(
                f"the disk is full under {output_dir} ({exc}). Nothing was written under a checkpoint's "
                "name; free space on that disk: a retry resumes from the last complete checkpoint",
                code="insufficient_storage",
            ) from exc
        if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
            raise TrainingError(
                f"out of memory: {exc}. Lower batch_size or max_length, raise gradient_accumulation_steps, "
                "or turn on gradient_checkpointing.",
                code="out_of_memory",
            ) from exc
        raise TrainingError(f"training failed: {type(exc).__name__}: {exc}") from exc
    if tracker is not None:
        tracker.finish()  # a stopped run has no TRAINING_COMPLETE to close it
    return result


class _StopOnly(TrainCallbacks):
    """A rank other than 0: its events and metrics go nowhere (rank 0 reports the run)."""

    def __init__(self, inner: TrainCallbacks) -> None:
        self.inner = inner

    def should_stop(self) -> bool:
        return self.inner.should_stop()


class _Run:
    """State of one run; `execute()` does the work."""

    def __init__(
        self,
        spec: TrainingSpec,
        model: str,
        training_file: Path,
        output_dir: Path,
        validation_file: Path | None,
        models_dir: Path,
        resume: bool,
        callbacks: TrainCallbacks,
        device: str = "auto",
        launch: Launch | None = None,
        peak_flops: float | None = None,
    ) -> None:
        self.spec = spec
        self.peak_flops = peak_flops
        self.device_setting = device
        self.launch = launch or Launch()
        self.model_name = model
        self.training_file = training_file
        self.validation_file = validation_file
        self.output_dir = output_dir
        self.models_dir = models_dir
        self.resume = resume
        self.callbacks = callbacks
        self.metrics = MetricsLog(output_dir / METRICS_FILE)
        self.is_dpo = spec.training_method == "dpo"
        self.loss = loss_for(spec)
        self.reference_cache: dict[str, torch.Tensor] = {}
        self.reference_memo: dict[str, dict[int, torch.Tensor]] = {}
        self.policy_is_reference = False

    # --- set-up -------------------------------------------------------------------------------
    def _check_output_dir(self) -> None:
        if self.resume:
            return
        leftovers = [
            p for p in (self.output_dir / METRICS_FILE, self.output_dir / "checkpoints") if p.exists()
        ]
        if leftovers:
            raise InvalidRequestError(
                f"output directory {self.output_dir} already holds a run ({leftovers[0].name}). "
                "Pass --resume to continue it, or choose another --output-dir.",
                param="output_dir",
                code="output_dir_not_empty",
            )

    def _load(self) -> None:
        set_threads(self.launch.local_world_size)
        keep_freed_memory()
        self._check_output_dir()
        base_path = resolve_model(self.model_name, self.models_dir)
        # Check the data before the (slow) model load: a bad file should fail in a second.
        has_eval = self.validation_file is not None or self.spec.validation_split > 0
        if self.validation_file is not None and self.spec.validation_split > 0:
            raise InvalidRequestError(
                "give either a validation_file or validation_split, not both", param="validation_split"
            )
        if self.spec.n_evals and not has_eval:
            raise InvalidRequestError(
                "n_evals > 0 needs a validation_file or validation_split to evaluate on",
                param="validation_file",
            )
        if self.spec.early_stopping_patience and not has_eval:
            raise InvalidRequestError(
                "early_stopping_patience needs a validation_file or validation_split (the loss it watches)",
                param="early_stopping_patience",
            )
        train_format = check_file(self.training_file, self.spec, "training_file")
        eval_format = None
        if self.validation_file is not None:
            eval_format = check_file(self.validation_file, self.spec, "validation_file")
        self.base_path = base_path
        device = select_device(self.device_setting, self.launch.local_rank)
        self.group: Group = start_group(self.launch, device)
        self.should_stop = agreed(self.callbacks.should_stop, self.group)
        self.policy: Policy = load_policy(self.spec, base_path, device)
        self.train_data: TokenizedData = tokenize_file(
            self.training_file,
            self.spec,
            self.policy.tokenizer,
            param="training_file",
            data_format=train_format,
        )
        self.eval_data: TokenizedData | None = None
        if self.validation_file is not None:
            self.eval_data = tokenize_file(
                self.validation_file,
                self.spec,
                self.policy.tokenizer,
                param="validation_file",
                data_format=eval_format,
            )
        elif self.spec.validation_split > 0:
            self.train_data, self.eval_data = held_out_split(self.train_data, self.spec)

    def _plan(self) -> None:
        spec = self.spec
        examples = [*self.train_data.examples, *(self.eval_data.examples if self.eval_data else [])]
        self.memory: MemoryPlan = plan_memory(
            self.policy.model.config,
            self.policy.device,
            longest_example=max((e.length for e in examples), default=1),
            tokens_per_forward=spec.tokens_per_forward,
            gradient_checkpointing=spec.gradient_checkpointing,
        )
        if self.memory.gradient_checkpointing:
            enable_gradient_checkpointing(self.policy)
        # DDP / FSDP wrap (and FSDP shards) the model before the optimizer sees its parameters.
        self.strategy = choose_strategy(
            self.policy.model, self.policy.lora, self.group, self.policy.autocast_dtype, self.launch.strategy
        )
        if self.strategy.sharded and self.policy.lora and spec.merge:
            raise TrainingSpecError(
                "merge with a LoRA run sharded by FSDP (strategy fsdp): the merged model needs the whole "
                "base on one device. Train with strategy ddp, or merge the downloaded adapter afterwards",
                param="merge",
            )
        self.effective_batch = spec.batch_size * spec.gradient_accumulation_steps
        self.steps_per_epoch = steps_per_epoch(len(self.train_data.examples), self.effective_batch)
        total = self.steps_per_epoch * spec.n_epochs
        self.total_steps = min(total, spec.max_steps) if spec.max_steps else total
        self.checkpoint_steps = {
            max(1, round(self.total_steps * k / spec.n_checkpoints)) for k in range(1, spec.n_checkpoints + 1)
        }
        self.eval_steps = {
            max(1, round(self.total_steps * k / spec.n_evals)) for k in range(1, spec.n_evals + 1)
        }
        if self.eval_data is not None:
            self.eval_steps.add(self.total_steps)  # a run with validation data ends with an evaluation
        params = self.policy.trainable_parameters()
        self.optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, spec, self.total_steps)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.policy.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.policy.device.type, dtype=dtype)

    # --- log-probs and losses ------------------------------------------------------------------
    def _batch(self, data: TokenizedData, ids: list[int]) -> PackedBatch:
        return pack([data.examples[i] for i in ids]).to(self.policy.device)

    def _reference_logps(self, batch: PackedBatch, split: str, ids: list[int]) -> torch.Tensor | None:
        """Reference log-prob sums [2B] (chosen, rejected interleaved), or None when not needed."""
        if not self.spec.needs_reference:
            return None
        if not self.policy.lora:
            return self.reference_cache[split][ids].reshape(-1).to(self.policy.device)
        # The reference never changes, so each example's values are computed once: later epochs and
        # repeated evaluations reuse them instead of running the reference forward again.
        memo = self.reference_memo.setdefault(split, {})
        # Sharded weights: a forward is a collective, so no rank may skip one that another runs
        # (which pairs each rank has seen differs); the memo then only serves the first step's reuse.
        if not self.strategy.sharded and all(i in memo for i in ids):
            return torch.cat([memo[i] for i in ids]).to(self.policy.device)
        was_training = self.policy.model.training
        self.policy.model.eval()  # no LoRA dropout in the reference
        try:
            with torch.no_grad(), reference_mode(self.policy), self._autocast():
                sums, _ = self.strategy.plain_logps(batch)
        finally:
            self.policy.model.train(was_training)
        for k, i in enumerate(ids):
            memo[i] = sums[2 * k : 2 * k + 2].detach().float().cpu()
        return sums

    def _loss_terms(self, data: TokenizedData, split: str, ids: list[int]) -> tuple[LossTerms, int]:
        """The loss terms of examples `ids` of `split`, and the tokens their pass ran."""
        batch = self._batch(data, ids)
        # Until the first optimizer step a LoRA policy is its reference (a fresh adapter adds B = 0,
        # a continued one starts as the reference copy), so its own log-probs are the reference's:
        # the reference forward of the first step is skipped, exactly.
        reuse = (
            self.policy_is_reference and split == "train" and self.policy.lora and self.spec.needs_reference
        )
        reference = None if reuse else self._reference_logps(batch, split, ids)
        with self._autocast():
            sums, counts = self.strategy.logps(batch)
        if reuse:
            reference = sums.detach()
            memo = self.reference_memo.setdefault(split, {})
            for k, i in enumerate(ids):
                memo[i] = reference[2 * k : 2 * k + 2].float().cpu()
        if not self.is_dpo:
            return self.loss(ExampleLogps(sums, counts), None), batch.n_tokens  # type: ignore[arg-type]
        policy = SequenceLogps.interleaved(sums, counts)
        ref = None if reference is None else SequenceLogps.interleaved(reference, counts)
        terms = self.loss(policy, ref)  # type: ignore[arg-type]
        terms.metrics.update(preference_metrics(policy))
        return terms, batch.n_tokens

    def _build_reference_cache(self) -> None:
        """Full fine-tuning: reference log-probs of every example under the starting weights, once."""
        if not self.spec.needs_reference or self.policy.lora:
            return
        path = self.output_dir / REFERENCE_CACHE
        if self.resume and path.is_file():
            self.reference_cache = torch.load(path, map_location="cpu", weights_only=True)
            return
        self.policy.model.eval()
        splits = {"train": self.train_data, **({"eval": self.eval_data} if self.eval_data else {})}
        for split, data in splits.items():
            self.reference_cache[split] = self._reference_values(data)
        self.policy.model.train()
        if self.group.is_main:
            # Written atomically: a resumed run needs the starting weights' values, and only complete ones.
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save(self.reference_cache, tmp)
            os.replace(tmp, path)

    def _reference_values(self, data: TokenizedData) -> torch.Tensor:
        """[N, 2] reference log-prob sums of `data`'s examples; each rank computes its share of the
        batches (the same number of passes on every rank), then the shares are summed."""
        size, n = self.spec.batch_size, len(data.examples)
        batches = [list(range(start, min(start + size, n))) for start in range(0, n, size)]
        world, rank = self.group.world_size, self.group.rank
        mine = batches[rank::world]
        rounds = -(-len(batches) // world)
        out = torch.zeros(n, 2)
        with torch.no_grad(), self._autocast():
            for k in range(rounds):
                if self.should_stop():
                    raise Stopped
                ids = mine[k] if k < len(mine) else batches[0]  # padding: computed, not kept
                sums, _ = self.strategy.logps(self._batch(data, ids))
                if k < len(mine):
                    out[ids] = sums.float().reshape(-1, 2).cpu()
        return self.group.all_sum(out)

    # --- evaluation ----------------------------------------------------------------------------
    def _evaluate(self, step: int) -> dict[str, Any]:
        """Loss and metrics over the whole validation set, with the same normalisers as a step."""
        assert self.eval_data is not None
        data = self.eval_data
        size = self.spec.batch_size
        ids = list(range(len(data.examples)))
        if self.group.distributed:
            lengths = [e.length for e in data.examples]
            passes, padding = rank_passes(ids, lengths, size, self.memory.tokens_per_forward, self.group)
        else:
            passes, padding = [ids[i : i + size] for i in range(0, len(ids), size)], 0
        self.policy.model.eval()
        try:
            with torch.no_grad():
                totals = accumulate(
                    passes,
                    step_normalisers(data.examples),
                    lambda ids: self._loss_terms(data, "eval", ids),
                    self.should_stop,
                    padding=padding,
                )
        finally:
            self.policy.model.train()
        return {**self._line(step, "eval", reduce_totals(totals, self.group))}

    def _line(self, step: int, split: str, totals: StepTotals) -> dict[str, Any]:
        return {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "split": split,
            "loss": totals.loss,
            **totals.mean_metrics(),
        }

    # --- the loop ------------------------------------------------------------------------------
    def _state(self, step: int, totals: dict[str, float]) -> dict[str, Any]:
        return {
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "step_in_epoch": step % self.steps_per_epoch,
            "scheduler": self.scheduler.state_dict(),
            "totals": dict(totals),
            "spec": self.spec.public_dict(),
        }

    def _restore(self) -> tuple[int, dict[str, float], Path | None]:
        if not self.resume:
            return 0, {}, None
        # Half-written directories of a killed run (their names start with a dot) are of no use.
        if self.group.is_main:
            for parent in (self.output_dir, self.output_dir / "checkpoints"):
                for leftover in parent.glob(".*-*"):
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
        self.group.barrier()
        found = list_checkpoints(self.output_dir / "checkpoints")
        if not found:
            return 0, {}, None
        latest = found[-1]
        state = load_checkpoint(self.policy, latest, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        if self.group.is_main:
            self.metrics.truncate_after(step)
        return step, dict(state.get("totals", {})), latest

    def _emit(self, type_: str, message: str, data: dict[str, Any]) -> None:
        self.callbacks.on_event(type_, message, data)

    def execute(self) -> TrainResult:
        """Set up, then the loop: train a step, log it, now and then evaluate and checkpoint."""
        self.started = time.perf_counter()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._load()
        self._plan()
        try:
            self._build_reference_cache()
            stopped = False
        except Stopped:
            stopped = True
        step, self.totals, resumed_from = self._restore()
        self._begin(step)
        self.last_line: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self.saved_step: int | None = None
        self.early_stopped = False
        self._restore_best(step)
        self.start_step, self.loop_started = step, time.perf_counter()
        self.policy.model.train()
        while step < self.total_steps and not stopped:
            try:
                line = self._train_step(step)
                step += 1
                self._log(line)
                self._maybe_evaluate(step)
                if self.early_stopped:
                    self._maybe_end_epoch(step)
                    break
            except Stopped:
                self.optimizer.zero_grad(set_to_none=True)  # a cut-short step's gradients are not a step
                stopped = True
                break
            self._maybe_end_epoch(step)
            self._maybe_checkpoint(step)
        return self._finish(step, stopped, resumed_from)

    def _begin(self, start_step: int) -> None:
        """Counters, the first-step reference shortcut, and the TRAINING_START event."""
        # A continued adapter with dropout differs from its reference copy even before the first step.
        same_forward = not self.policy.reference_adapter or self.spec.lora_dropout == 0
        self.policy_is_reference = REUSE_POLICY_AS_REFERENCE and start_step == 0 and same_forward
        for key in ("tokens_seen", "examples_seen", "wall_time_s", "model_flops", "train_step_s"):
            self.totals.setdefault(key, 0.0)
        self._begin_flops()
        self.wall_before = self.totals["wall_time_s"]
        self.precision = "bf16" if self.policy.autocast_dtype == torch.bfloat16 else "fp32"
        self.lengths = [e.length for e in self.train_data.examples]
        self.order: dict[int, list[list[int]]] = {}
        self.checkpoints = list_checkpoints(self.output_dir / "checkpoints")
        stats, spec = self.train_data.stats, self.spec
        cuts = stats.prompts_truncated + stats.answers_truncated + stats.sequences_truncated
        notes = [f"resumed at step {start_step}"] if start_step else []
        if stats.skipped:
            notes.append(f"{len(stats.skipped)} examples skipped, see train_report.json")
        if cuts:
            notes.append(f"{cuts} truncations at max_length {spec.max_length}")
        self._emit(
            events.TRAINING_START,
            f"training {self.model_name} with {spec.training_method} on {len(self.train_data.examples)} "
            f"examples for {self.total_steps} steps, {self.precision} on {self.policy.device}"
            + (f" ({'; '.join(notes)})" if notes else ""),
            {
                "total_steps": self.total_steps,
                "start_step": start_step,
                "n_examples": len(self.train_data.examples),
                "skipped": len(stats.skipped),
                "truncated": cuts,
                "device": str(self.policy.device),
                "world_size": self.group.world_size,
                "strategy": self.strategy.name,
                "kernels": self.policy.kernels,
                "precision": self.precision,
                "loss": spec.loss_name + ("+rpo" if spec.uses_rpo else ""),
                "tokens_per_forward": self.memory.tokens_per_forward,
                "gradient_checkpointing": self.policy.gradient_checkpointing,
            },
        )

    def _begin_flops(self) -> None:
        """What MFU needs (`training.flops`), before the loop's clock: the logit rows of each example,
        whether the model's FLOPs can be counted, one device's peak (measured here, not in a step)."""
        self.logit_rows = [logit_tokens(e) for e in self.train_data.examples]
        self.flops_config: Any = self.policy.model.config
        try:
            block_matmul_params(self.flops_config)
        except ValueError:  # a model whose FLOPs are not counted (mixture of experts): no mfu
            self.flops_config = None
            return
        self.peak: Peak = device_peak_flops(
            self.policy.device, self.policy.autocast_dtype or torch.float32, self.peak_flops
        )
        # Every rank measures its own share of the machine at the same time; none starts its first
        # step (and slows another's measurement) before all have finished.
        self.group.barrier()

    def _step_flops(self, step_ids: list[int], tokens: int, elapsed: float) -> dict[str, float]:
        """The step's `model_flops_per_s` (global) and `mfu` (per device); nothing when not counted."""
        if self.flops_config is None:
            return {}
        flops = model_flops(
            self.flops_config,
            tokens,
            sum(self.logit_rows[i] for i in step_ids),
            trained_weights=not self.policy.lora,
            reference=self.spec.needs_reference,
        )
        self.totals["model_flops"] += flops
        self.totals["train_step_s"] += elapsed
        return {
            "model_flops_per_s": flops / elapsed,
            "mfu": mfu(flops / elapsed, self.group.world_size, self.peak.flops),
        }

    def _flops_summary(self, totals: dict[str, float]) -> dict[str, Any]:
        """The run's model FLOP/s and MFU over all its steps (resumed ones too), and the peak used."""
        if self.flops_config is None or not totals.get("train_step_s"):
            return dict.fromkeys(
                ("model_flops", "model_flops_per_s", "mfu", "peak_flops", "peak_flops_source")
            )
        rate = totals["model_flops"] / totals["train_step_s"]
        return {
            "model_flops": totals["model_flops"],
            "model_flops_per_s": rate,
            "mfu": mfu(rate, self.group.world_size, self.peak.flops),
            "peak_flops": self.peak.flops,
            "peak_flops_source": self.peak.source,
        }

    def _step_examples(self, step: int) -> list[int]:
        """The examples of optimizer step `step`: the seeded, length-grouped order of its epoch."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch not in self.order:
            self.order = {epoch: epoch_steps(self.lengths, self.effective_batch, self.spec.seed, epoch)}
        return self.order[epoch][index]

    def _passes(self, step_ids: list[int]) -> tuple[list[list[int]], int]:
        """This rank's share of the step as micro-batches of batch_size examples, each cut into
        passes that fit the memory plan; and how many trailing passes are padding (several ranks)."""
        return rank_passes(
            step_ids, self.lengths, self.spec.batch_size, self.memory.tokens_per_forward, self.group
        )

    def _train_step(self, step: int) -> dict[str, Any]:
        """Accumulate one step's gradients, clip and step; the step's metrics line."""
        step_ids = self._step_examples(step)
        data = self.train_data
        started = time.perf_counter()
        passes, padding = self._passes(step_ids)
        totals = accumulate(
            passes,
            step_normalisers([data.examples[i] for i in step_ids]),
            lambda ids: self._loss_terms(data, "train", ids),
            self.should_stop,
            padding=padding,
            loss_scale=self.strategy.loss_scale,
            grad_sync=self.strategy.grad_sync if self.group.distributed else None,
        )
        totals = reduce_totals(totals, self.group)
        grad_norm, lr = clip_and_step(self.optimizer, self.scheduler, self.spec.max_grad_norm)
        self.policy_is_reference = False
        elapsed = time.perf_counter() - started
        self.totals["tokens_seen"] += totals.tokens
        self.totals["examples_seen"] += len(step_ids)
        rate_key = "pairs_per_s" if self.is_dpo else "examples_per_s"
        return {
            **self._line(step + 1, "train", totals),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": totals.tokens / elapsed,
            rate_key: len(step_ids) / elapsed,
            **self._step_flops(step_ids, totals.tokens, elapsed),
        }

    def _eta(self, step: int) -> float:
        per_step = (time.perf_counter() - self.loop_started) / max(step - self.start_step, 1)
        return per_step * (self.total_steps - step)

    def _log(self, line: dict[str, Any]) -> None:
        """metrics.jsonl (rank 0) and the callbacks (progress bars, the job's events, W&B)."""
        if self.group.is_main:
            self.metrics.append(line)
        if line["split"] == "train":
            self.last_line = line
        else:
            self.last_eval = line
        self.callbacks.on_step(
            {**line, "total_steps": self.total_steps, "eta_seconds": self._eta(line["step"])}
        )

    def _maybe_evaluate(self, step: int) -> None:
        if step not in self.eval_steps:
            return
        line = self._evaluate(step)
        self._log(line)
        self._emit(events.EVAL, f"evaluation at step {step}: loss {line['loss']:.4f}", line)
        self._track_best(step, line)

    # --- the best checkpoint and early stopping -------------------------------------------------
    def _restore_best(self, step: int) -> None:
        """The best evaluation so far (`checkpoints/best.json`) and the evaluations since it."""
        self.best: dict[str, Any] | None = None
        self.evals_without_improvement = 0
        if not self.resume or step == 0:
            return
        best = read_best(self.output_dir / "checkpoints")
        if best is not None and int(best["step"]) <= step:
            self.best = best
            evals = [
                line
                for line in self.metrics.read()
                if line.get("split") == "eval" and int(best["step"]) < int(line.get("step", 0)) <= step
            ]
            self.evals_without_improvement = len(evals)

    def _track_best(self, step: int, line: dict[str, Any]) -> None:
        """Keep the best checkpoint (lowest validation loss) marked; decide on early stopping.

        Only runs evaluated more than once keep one: with a single evaluation the best is the end."""
        if self.spec.n_evals < 2:
            return
        loss = line.get("loss")
        if loss is None or loss != loss:  # NaN never improves
            improved = False
        else:
            improved = (
                self.best is None or loss < float(self.best["eval_loss"]) - self.spec.early_stopping_min_delta
            )
        if improved:
            self.evals_without_improvement = 0
            path = self._save_checkpoint(step)
            self.best = {
                "step": step,
                "eval_loss": loss,
                "path": path.name,
                "metrics": {k: v for k, v in line.items() if k not in ("split",)},
            }
            checkpoints = self.output_dir / "checkpoints"
            write_text_atomic(checkpoints / BEST_FILE, json.dumps(self.best, indent=2) + "\n")
            self._emit(
                events.CHECKPOINT_SAVE,
                f"best checkpoint so far at step {step}: validation loss {loss:.4f}",
                {"step": step, "path": str(path), "best": True, "eval_loss": loss},
            )
            return
        self.evals_without_improvement += 1
        patience = self.spec.early_stopping_patience
        if patience and self.evals_without_improvement >= patience and step < self.total_steps:
            self.early_stopped = True
            assert self.best is not None
            self._emit(
                events.EARLY_STOP,
                f"early stopping at step {step}: no improvement of the validation loss for {patience} "
                f"evaluations; the best is step {self.best['step']} (loss {float(self.best['eval_loss']):.4f})",
                {"step": step, "best_step": self.best["step"], "best_eval_loss": self.best["eval_loss"]},
            )

    def _maybe_end_epoch(self, step: int) -> None:
        if step % self.steps_per_epoch == 0:
            epoch = step // self.steps_per_epoch
            self._emit(events.EPOCH_COMPLETE, f"epoch {epoch} complete", {"epoch": epoch, "step": step})

    def _save_checkpoint(self, step: int) -> Path:
        self.totals["wall_time_s"] = self.wall_before + time.perf_counter() - self.started
        path = save_checkpoint(
            self.policy,
            self.output_dir / "checkpoints",
            step,
            self._state(step, self.totals),
            optimizer=self.optimizer,
            group=self.group,
            full_state_dict=self.strategy.full_state_dict,
        )
        self.saved_step = step
        self.checkpoints = list_checkpoints(self.output_dir / "checkpoints")
        return path

    def _maybe_checkpoint(self, step: int) -> None:
        if step not in self.checkpoint_steps or self.saved_step == step:  # saved already as the best
            return
        path = self._save_checkpoint(step)
        self._emit(
            events.CHECKPOINT_SAVE, f"checkpoint saved at step {step}", {"step": step, "path": str(path)}
        )

    def _finish(self, step: int, stopped: bool, resumed_from: Path | None) -> TrainResult:
        """Final weights (unless stopped), the report, TRAINING_COMPLETE."""
        result = TrainResult(
            status="stopped" if stopped else "completed",
            output_dir=self.output_dir,
            steps=step,
            total_steps=self.total_steps,
            epoch=round(step / self.steps_per_epoch, 4),
            checkpoints=self.checkpoints,
            final_metrics=self.last_line,
        )
        if not stopped:
            if self.early_stopped and self.best is not None and int(self.best["step"]) != step:
                # Early stopping hands back the best weights, not the last ones (every rank loads them).
                best = self.output_dir / "checkpoints" / str(self.best["path"])
                load_checkpoint(self.policy, best, self.optimizer)
            self._write_final(result)
        self.totals["wall_time_s"] = self.wall_before + time.perf_counter() - self.started
        result.report = self._report(result, self.totals, self.last_eval, resumed_from, self.precision)
        # Sharded weights (FSDP): every rank runs the forward passes, a collective; replicated ones
        # (DDP, one process): rank 0 alone evaluates, the others wait at the barrier below.
        evaluates = self.group.is_main or self.strategy.sharded
        if not stopped and self.eval_data is not None and self.is_dpo and evaluates:
            result.report["evaluation"] = self._final_evaluation()
        if self.group.is_main:
            write_report(self.output_dir, result.report)
            self._write_curves()
        self.group.barrier()
        stop_group(self.group)
        if not stopped:
            self._emit(
                events.TRAINING_COMPLETE,
                f"training complete after {step} steps",
                {"step": step, "final_metrics": self.last_line},
            )
        return result

    def _write_curves(self) -> None:
        """`curves.png` next to metrics.jsonl; a picture that cannot be drawn never fails the run."""
        try:
            write_curves(
                self.metrics.read(),
                self.output_dir / CURVES_FILE,
                title=f"{self.model_name}, {self.spec.loss_name}" + (" + rpo" if self.spec.uses_rpo else ""),
            )
        except Exception as exc:
            print(f"warning: curves.png not written: {type(exc).__name__}: {exc}", flush=True)

    def _final_evaluation(self) -> dict[str, Any]:
        """`eval.json`: the final weights on the validation pairs beside the reference (`preftune eval`'s
        figures), so every job with validation data ends with the numbers users compare."""
        examples: list[Any] = self.eval_data.examples if self.eval_data else []
        data = self.eval_data
        assert data is not None

        def policy(batch: PackedBatch, _ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            with self._autocast():
                return self.strategy.plain_logps(batch)

        def reference(batch: PackedBatch, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            if self.spec.needs_reference:
                sums = self._reference_logps(batch, "eval", ids)
                assert sums is not None
                return sums, sums
            with reference_mode(self.policy), self._autocast():
                return self.strategy.plain_logps(batch)

        has_reference = self.policy.lora or self.spec.needs_reference
        self.policy.model.eval()
        try:
            figures = evaluate_examples(
                examples,
                policy,
                reference if has_reference else None,
                beta=self.spec.dpo_beta,
                batch_size=self.spec.batch_size,
                device=self.policy.device,
            )
        finally:
            self.policy.model.train()
        if not has_reference:
            figures["base"] = None  # full fine-tuning without reference log-probs: no base figures
        figures = clean({"object": "evaluation.result", "model_name": self.model_name, **figures})
        if not self.group.is_main:
            return figures
        write_text_atomic(self.output_dir / EVAL_FILE, json.dumps(figures, indent=2) + "\n")
        base = figures.get("base") or {}
        self._emit(
            events.EVAL,
            f"held-out evaluation of the final weights on {figures['n_pairs']} pairs: preference accuracy "
            f"{base.get('preference_accuracy', float('nan')):.3f} (base) -> "
            f"{figures['model']['preference_accuracy']:.3f}, DPO loss {figures['model']['loss']:.4f}",
            {**figures, "final": True},
        )
        return figures

    def _write_final(self, result: TrainResult) -> None:
        """The final adapter or model (and merged model), written once, by rank 0."""
        weights = self.strategy.full_state_dict()  # a collective under FSDP: every rank takes part
        final = self.output_dir / ("adapter" if self.policy.lora else "model")
        if self.group.is_main:
            final = write_final_weights(self.policy, self.output_dir, weights)
        if self.policy.lora:
            result.adapter_path = final
        else:
            result.model_path = final
        if self.spec.merge:
            merged = self.output_dir / "merged"
            result.merged_path = write_merged(self.policy, self.output_dir) if self.group.is_main else merged

    def _report(
        self,
        result: TrainResult,
        totals: dict[str, float],
        last_eval: dict[str, Any],
        resumed_from: Path | None,
        precision: str,
    ) -> dict[str, Any]:
        data = self.train_data
        report: dict[str, Any] = {
            "status": result.status,
            "model": self.model_name,
            "base_model_path": str(self.base_path),
            "training_method": self.spec.training_method,
            "training_file": str(self.training_file),
            "data_format": data.format,
            "n_records": data.n_records,
            "n_examples": len(data.examples),
            "truncation": data.stats.to_dict(),
            "steps": result.steps,
            "total_steps": self.total_steps,
            "epochs": result.epoch,
            "tokens_seen": int(totals["tokens_seen"]),
            "examples_seen": int(totals["examples_seen"]),
            "wall_time_s": round(totals["wall_time_s"], 3),
            **self._flops_summary(totals),
            "final_metrics": result.final_metrics,
            "final_eval_metrics": last_eval or None,
            "best_checkpoint": self.best,
            "early_stopped": self.early_stopped,
            "device": str(self.policy.device),
            "world_size": self.group.world_size,
            "strategy": self.strategy.name,
            "kernels": self.policy.kernels,
            "precision": precision,
            "gradient_checkpointing": self.policy.gradient_checkpointing,
            "tokens_per_forward": self.memory.tokens_per_forward,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "outputs": {
                "adapter": str(result.adapter_path) if result.adapter_path else None,
                "model": str(result.model_path) if result.model_path else None,
                "merged": str(result.merged_path) if result.merged_path else None,
                "checkpoints": [str(p) for p in result.checkpoints],
            },
            "spec": self.spec.public_dict(),
        }
        if self.eval_data is not None:
            report["validation"] = {
                "source": "validation_file" if self.validation_file is not None else "validation_split",
                "n_records": self.eval_data.n_records,
                "n_examples": len(self.eval_data.examples),
                "truncation": self.eval_data.stats.to_dict(),
            }
        return report


def preference_metrics(policy: SequenceLogps) -> dict[str, torch.Tensor]:
    """The policy's own preference, per pair: does it give the preferred answer the higher log-prob
    (summed, and per token)? Reference-free, so it means the same before training and for every method."""
    return {
        "preference_accuracy": (policy.chosen > policy.rejected).float().detach(),
        "preference_accuracy_normalized": (policy.chosen_mean() > policy.rejected_mean()).float().detach(),
    }


def held_out_split(data: TokenizedData, spec: TrainingSpec) -> tuple[TokenizedData, TokenizedData]:
    """`validation_split`: a seeded, deterministic share of the examples held out for evaluation
    (the same on every run and every resume with the same seed); at least one example each side."""
    n = len(data.examples)
    n_eval = min(max(1, round(n * spec.validation_split)), n - 1)
    if n < 2 or n_eval < 1:
        raise InvalidRequestError(
            f"validation_split {spec.validation_split} leaves no examples to train or evaluate on "
            f"({n} examples)",
            param="validation_split",
        )
    order = list(range(n))
    random.Random(spec.seed).shuffle(order)
    held = set(order[:n_eval])
    examples: list[Any] = data.examples
    train = [e for i, e in enumerate(examples) if i not in held]
    evaluate = [e for i, e in enumerate(examples) if i in held]
    return (
        TokenizedData(train, data.format, data.n_records - n_eval, data.stats),
        TokenizedData(evaluate, data.format, n_eval),
    )
