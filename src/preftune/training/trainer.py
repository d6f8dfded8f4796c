"""`train()`: one local training run from a spec, a model and a data file to an output directory.

The loop, step by step: take the step's examples (seeded, length-grouped order), split them into
micro-batches, pack each into prefix-shared rows, compute policy log-probs (and the reference's:
LoRA adapters switched off on the same rows, or the cache for full fine-tuning), call the loss,
backpropagate with each micro-batch weighted by its share of the step, clip, step, log, and now
and then evaluate and checkpoint. `should_stop()` is polled before every micro-batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from preftune.contracts.base_models import resolve_model
from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError, PreftuneError, TrainingError
from preftune.kernels.allocator import keep_freed_memory
from preftune.training import callbacks as events
from preftune.training.callbacks import CallbackList, TrainCallbacks
from preftune.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, set_rng_state
from preftune.training.dataset import TokenizedData, check_file, tokenize_file
from preftune.training.logps import sequence_logps
from preftune.training.losses import LossOutput, SequenceLogps, preference_loss, sft_loss
from preftune.training.memory import MemoryPlan, plan_memory, split_by_tokens
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
)
from preftune.training.packing import PackedBatch, pack
from preftune.training.result import TrainResult
from preftune.training.sampling import epoch_steps, micro_batches, steps_per_epoch
from preftune.training.schedule import build_scheduler
from preftune.training.tokenize import PairTokens, SFTTokens
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
) -> TrainResult:
    """Train `model` on `training_file` as `spec` says; write outputs to `output_dir`.

    User errors raise `DataValidationError`, `TrainingSpecError`, `ModelNotFoundError` or
    `InvalidRequestError`; anything else that goes wrong raises `TrainingError`.
    """
    hooks = callbacks or TrainCallbacks()
    tracker = wandb_callbacks(spec, output_dir=Path(output_dir))
    if tracker is not None:
        hooks = CallbackList([hooks, tracker])
    run = _Run(
        spec,
        model,
        Path(training_file),
        Path(output_dir),
        Path(validation_file) if validation_file else None,
        Path(models_dir),
        resume,
        hooks,
    )
    try:
        result = run.execute()
    except BaseException as exc:
        if tracker is not None:
            tracker.finish(exit_code=1)
        if isinstance(exc, PreftuneError | KeyboardInterrupt | SystemExit):
            raise
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


def _n_targets(example: PairTokens | SFTTokens) -> int:
    if isinstance(example, SFTTokens):
        return sum(example.labels)
    return len(example.chosen) + len(example.rejected)


def _mean(values: list[torch.Tensor]) -> float:
    return float(torch.cat(values).float().mean()) if values else float("nan")


class _Stopped(Exception):
    """`should_stop()` said yes outside the training loop (reference pass, evaluation)."""


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
    ) -> None:
        self.spec = spec
        self.model_name = model
        self.training_file = training_file
        self.validation_file = validation_file
        self.output_dir = output_dir
        self.models_dir = models_dir
        self.resume = resume
        self.callbacks = callbacks
        self.metrics = MetricsLog(output_dir / METRICS_FILE)
        self.is_dpo = spec.training_method == "dpo"
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
        set_threads()
        keep_freed_memory()
        self._check_output_dir()
        base_path = resolve_model(self.model_name, self.models_dir)
        # Check the data before the (slow) model load: a bad file should fail in a second.
        if self.spec.n_evals and self.validation_file is None:
            raise InvalidRequestError(
                "n_evals > 0 needs a validation_file to evaluate on", param="validation_file"
            )
        train_format = check_file(self.training_file, self.spec, "training_file")
        eval_format = None
        if self.validation_file is not None:
            eval_format = check_file(self.validation_file, self.spec, "validation_file")
        self.base_path = base_path
        self.policy: Policy = load_policy(self.spec, base_path, select_device())
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
        if all(i in memo for i in ids):
            return torch.cat([memo[i] for i in ids]).to(self.policy.device)
        was_training = self.policy.model.training
        self.policy.model.eval()  # no LoRA dropout in the reference
        try:
            with torch.no_grad(), reference_mode(self.policy), self._autocast():
                sums, _ = sequence_logps(self.policy.model, batch)
        finally:
            self.policy.model.train(was_training)
        for k, i in enumerate(ids):
            memo[i] = sums[2 * k : 2 * k + 2].detach().float().cpu()
        return sums

    def _loss(self, batch: PackedBatch, split: str, ids: list[int]) -> LossOutput:
        # Until the first optimizer step a LoRA policy is its reference (a fresh adapter adds B = 0,
        # a continued one starts as the reference copy), so its own log-probs are the reference's:
        # the reference forward of the first step is skipped, exactly.
        reuse = (
            self.policy_is_reference and split == "train" and self.policy.lora and self.spec.needs_reference
        )
        reference = None if reuse else self._reference_logps(batch, split, ids)
        with self._autocast():
            sums, counts = sequence_logps(self.policy.model, batch)
        if reuse:
            reference = sums.detach()
            memo = self.reference_memo.setdefault(split, {})
            for k, i in enumerate(ids):
                memo[i] = reference[2 * k : 2 * k + 2].float().cpu()
        if not self.is_dpo:
            return sft_loss(sums, counts)
        policy = SequenceLogps(sums[0::2], sums[1::2], counts[0::2], counts[1::2])
        ref = (
            None
            if reference is None
            else SequenceLogps(reference[0::2], reference[1::2], counts[0::2], counts[1::2])
        )
        return preference_loss(policy, ref, self.spec)

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
            out = torch.zeros(len(data.examples), 2)
            with torch.no_grad(), self._autocast():
                for start in range(0, len(data.examples), self.spec.batch_size):
                    if self.callbacks.should_stop():
                        raise _Stopped
                    ids = list(range(start, min(start + self.spec.batch_size, len(data.examples))))
                    sums, _ = sequence_logps(self.policy.model, self._batch(data, ids))
                    out[ids] = sums.float().reshape(-1, 2).cpu()
            self.reference_cache[split] = out
        self.policy.model.train()
        # Written atomically: a resumed run needs the starting weights' values, and only complete ones.
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(self.reference_cache, tmp)
        os.replace(tmp, path)

    def _weights(self, data: TokenizedData, micro: list[list[int]]) -> list[float]:
        """Each micro-batch's share of the step, so accumulation equals one big batch.

        SFT's loss is a per-token mean, so its micro-batches weigh by target tokens; preference losses
        are per-pair means, so they weigh by pairs.
        """
        if self.is_dpo:
            sizes = [float(len(m)) for m in micro]
        else:
            sizes = [float(sum(_n_targets(data.examples[i]) for i in m)) for m in micro]
        total = sum(sizes) or 1.0
        return [s / total for s in sizes]

    # --- evaluation ----------------------------------------------------------------------------
    def _evaluate(self, step: int) -> dict[str, Any]:
        assert self.eval_data is not None
        data = self.eval_data
        self.policy.model.eval()
        collected: dict[str, list[torch.Tensor]] = {}
        loss_sum, weight_sum = 0.0, 0.0
        try:
            with torch.no_grad():
                for start in range(0, len(data.examples), self.spec.batch_size):
                    if self.callbacks.should_stop():
                        raise _Stopped
                    ids = list(range(start, min(start + self.spec.batch_size, len(data.examples))))
                    batch = self._batch(data, ids)
                    out = self._loss(batch, "eval", ids)
                    weight = float(len(ids)) if self.is_dpo else float(batch.targets.numel())
                    loss_sum += float(out.loss) * weight
                    weight_sum += weight
                    for key, value in out.metrics.items():
                        collected.setdefault(key, []).append(value.detach().float().cpu())
        finally:
            self.policy.model.train()
        line: dict[str, Any] = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "split": "eval",
            "loss": loss_sum / max(weight_sum, 1.0),
        }
        line.update({key: _mean(values) for key, values in collected.items()})
        return line

    # --- the loop ------------------------------------------------------------------------------
    def _state(self, step: int, totals: dict[str, float]) -> dict[str, Any]:
        return {
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "step_in_epoch": step % self.steps_per_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "totals": dict(totals),
            "spec": self.spec.public_dict(),
        }

    def _restore(self) -> tuple[int, dict[str, float], Path | None]:
        if not self.resume:
            return 0, {}, None
        # Half-written directories of a killed run (their names start with a dot) are of no use.
        for parent in (self.output_dir, self.output_dir / "checkpoints"):
            for leftover in parent.glob(".*-*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
        found = list_checkpoints(self.output_dir / "checkpoints")
        if not found:
            return 0, {}, None
        latest = found[-1]
        state = load_checkpoint(self.policy, latest)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        self.metrics.truncate_after(step)
        return step, dict(state.get("totals", {})), latest

    def _emit(self, type_: str, message: str, data: dict[str, Any]) -> None:
        self.callbacks.on_event(type_, message, data)

    def execute(self) -> TrainResult:
        started = time.perf_counter()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._load()
        self._plan()
        stopped = False
        try:
            self._build_reference_cache()
        except _Stopped:
            stopped = True
        start_step, totals, resumed_from = self._restore()
        # A continued adapter with dropout differs from its reference copy even before the first step.
        same_forward = not self.policy.reference_adapter or self.spec.lora_dropout == 0
        self.policy_is_reference = REUSE_POLICY_AS_REFERENCE and start_step == 0 and same_forward
        for key in ("tokens_seen", "examples_seen", "wall_time_s"):
            totals.setdefault(key, 0.0)
        wall_before = totals["wall_time_s"]
        spec, policy = self.spec, self.policy
        precision = "bf16" if policy.autocast_dtype == torch.bfloat16 else "fp32"
        stats = self.train_data.stats
        cuts = stats.prompts_truncated + stats.answers_truncated + stats.sequences_truncated
        notes = [f"resumed at step {start_step}"] if start_step else []
        if stats.skipped:
            notes.append(f"{len(stats.skipped)} examples skipped, see train_report.json")
        if cuts:
            notes.append(f"{cuts} truncations at max_length {spec.max_length}")
        self._emit(
            events.TRAINING_START,
            f"training {self.model_name} with {spec.training_method} on {len(self.train_data.examples)} "
            f"examples for {self.total_steps} steps, {precision} on {policy.device}"
            + (f" ({'; '.join(notes)})" if notes else ""),
            {
                "total_steps": self.total_steps,
                "start_step": start_step,
                "n_examples": len(self.train_data.examples),
                "skipped": len(stats.skipped),
                "truncated": cuts,
                "device": str(policy.device),
                "precision": precision,
                "tokens_per_forward": self.memory.tokens_per_forward,
                "gradient_checkpointing": policy.gradient_checkpointing,
            },
        )

        checkpoints = list_checkpoints(self.output_dir / "checkpoints")
        last_line: dict[str, Any] = {}
        last_eval: dict[str, Any] = {}
        step = start_step
        order: dict[int, list[list[int]]] = {}
        loop_started = time.perf_counter()
        policy.model.train()
        lengths = [e.length for e in self.train_data.examples]
        while step < self.total_steps and not stopped:
            epoch, index = divmod(step, self.steps_per_epoch)
            if epoch not in order:
                order = {epoch: epoch_steps(lengths, self.effective_batch, spec.seed, epoch)}
            step_ids = order[epoch][index]
            # Micro-batches of batch_size examples (gradient accumulation), each cut into passes that
            # fit the memory plan; `_weights` makes their gradients add up to the step's.
            micro = [
                run
                for group in micro_batches(step_ids, spec.batch_size)
                for run in split_by_tokens(group, lengths, self.memory.tokens_per_forward)
            ]
            weights = self._weights(self.train_data, micro)
            step_started = time.perf_counter()
            collected: dict[str, list[torch.Tensor]] = {}
            loss_value, tokens = 0.0, 0
            for ids, weight in zip(micro, weights, strict=True):
                if self.callbacks.should_stop():
                    stopped = True
                    break
                batch = self._batch(self.train_data, ids)
                out = self._loss(batch, "train", ids)
                (out.loss * weight).backward()
                loss_value += float(out.loss.detach()) * weight
                tokens += batch.n_tokens
                for key, value in out.metrics.items():
                    collected.setdefault(key, []).append(value.detach().float().cpu())
            if stopped:
                self.optimizer.zero_grad(set_to_none=True)
                break
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            max_norm = spec.max_grad_norm if spec.max_grad_norm > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            lr = float(self.scheduler.get_last_lr()[0])
            self.optimizer.step()
            self.policy_is_reference = False
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1

            elapsed = time.perf_counter() - step_started
            totals["tokens_seen"] += tokens
            totals["examples_seen"] += len(step_ids)
            rate_key = "pairs_per_s" if self.is_dpo else "examples_per_s"
            line: dict[str, Any] = {
                "step": step,
                "epoch": round(step / self.steps_per_epoch, 4),
                "split": "train",
                "loss": loss_value,
            }
            line.update({key: _mean(values) for key, values in collected.items()})
            line.update(
                {
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens / elapsed,
                    rate_key: len(step_ids) / elapsed,
                }
            )
            self.metrics.append(line)
            last_line = line
            per_step = (time.perf_counter() - loop_started) / (step - start_step)
            self.callbacks.on_step(
                {**line, "total_steps": self.total_steps, "eta_seconds": per_step * (self.total_steps - step)}
            )

            if step in self.eval_steps:
                try:
                    last_eval = self._evaluate(step)
                except _Stopped:
                    stopped = True
                    break
                self.metrics.append(last_eval)
                self.callbacks.on_step(
                    {
                        **last_eval,
                        "total_steps": self.total_steps,
                        "eta_seconds": per_step * (self.total_steps - step),
                    }
                )
                self._emit(events.EVAL, f"evaluation at step {step}: loss {last_eval['loss']:.4f}", last_eval)
            if step % self.steps_per_epoch == 0:
                self._emit(
                    events.EPOCH_COMPLETE,
                    f"epoch {step // self.steps_per_epoch} complete",
                    {"epoch": step // self.steps_per_epoch, "step": step},
                )
            if step in self.checkpoint_steps:
                totals["wall_time_s"] = wall_before + time.perf_counter() - started
                path = save_checkpoint(
                    policy, self.output_dir / "checkpoints", step, self._state(step, totals)
                )
                checkpoints = list_checkpoints(self.output_dir / "checkpoints")
                self._emit(
                    events.CHECKPOINT_SAVE,
                    f"checkpoint saved at step {step}",
                    {"step": step, "path": str(path)},
                )

        result = TrainResult(
            status="stopped" if stopped else "completed",
            output_dir=self.output_dir,
            steps=step,
            total_steps=self.total_steps,
            epoch=round(step / self.steps_per_epoch, 4),
            checkpoints=checkpoints,
            final_metrics=last_line,
        )
        if not stopped:
            final = write_final_weights(policy, self.output_dir)
            if policy.lora:
                result.adapter_path = final
            else:
                result.model_path = final
            if spec.merge:
                result.merged_path = write_merged(policy, self.output_dir)
        totals["wall_time_s"] = wall_before + time.perf_counter() - started
        result.report = self._report(result, totals, last_eval, resumed_from, precision)
        write_report(self.output_dir, result.report)
        if not stopped:
            self._emit(
                events.TRAINING_COMPLETE,
                f"training complete after {step} steps",
                {"step": step, "final_metrics": last_line},
            )
        return result

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
            "final_metrics": result.final_metrics,
            "final_eval_metrics": last_eval or None,
            "device": str(self.policy.device),
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
                "n_records": self.eval_data.n_records,
                "n_examples": len(self.eval_data.examples),
                "truncation": self.eval_data.stats.to_dict(),
            }
        return report
