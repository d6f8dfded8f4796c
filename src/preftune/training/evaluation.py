"""Held-out evaluation of a model or adapter on preference pairs, with its base model's figures beside.

The figures users compare across runs and against TRL, all on pairs the model did not train on:
- `loss`: the sigmoid DPO loss at `beta` against the reference (the base model), whatever method
  trained the model, so DPO, SimPO and RPO runs are judged by one yardstick;
- `rewards/accuracies`, `rewards/margins`, `rewards/chosen`, `rewards/rejected`: TRL's DPO rewards
  (beta times the log-ratio to the reference);
- `preference_accuracy`: the share of pairs where the model itself gives the preferred answer the
  higher log-probability, and `preference_accuracy_normalized` the same per token. Reference-free, so
  the base model has them too: `base` holds the same figures for the base model (its loss is ln 2
  and its rewards are 0 by construction).

`evaluate_examples` is the loop (the trainer's end-of-run evaluation uses it on the model in
memory); `evaluate` loads a model or an adapter and a file and runs it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from preftune.contracts.base_models import resolve_model
from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError
from preftune.training.losses import SequenceLogps, loss_for
from preftune.training.packing import PackedBatch, pack
from preftune.training.tokenize import PairTokens

EVAL_FILE = "eval.json"
FIGURES = (
    "loss",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
    "rewards/rejected",
    "preference_accuracy",
    "preference_accuracy_normalized",
    "logps/chosen",
    "logps/rejected",
)
# (sums [2B] chosen/rejected interleaved, counts [2B]) of a batch of pairs, given with their indices.
Forward = Callable[[PackedBatch, list[int]], tuple[torch.Tensor, torch.Tensor]]
Progress = Callable[[int, int], None]


def _figures(policy: SequenceLogps, reference: SequenceLogps, beta: float) -> dict[str, torch.Tensor]:
    """Per-pair figures [B] of `policy` against `reference`."""
    spec = TrainingSpec(dpo_beta=beta)
    terms = loss_for(spec)(policy, reference)  # type: ignore[arg-type]
    chosen = beta * (policy.chosen - reference.chosen)
    rejected = beta * (policy.rejected - reference.rejected)
    out = {
        "loss": -torch.nn.functional.logsigmoid(chosen - rejected),
        "preference_accuracy": (policy.chosen > policy.rejected).float(),
        "preference_accuracy_normalized": (policy.chosen_mean() > policy.rejected_mean()).float(),
    }
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"):
        out[key] = terms.metrics[key]
    out["logps/chosen"], out["logps/rejected"] = policy.chosen, policy.rejected
    return {k: v.detach().float().cpu() for k, v in out.items()}


def evaluate_examples(
    examples: Sequence[PairTokens],
    policy: Forward,
    reference: Forward | None,
    *,
    beta: float = 0.1,
    batch_size: int = 8,
    device: torch.device | None = None,
    on_progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """`{"model": figures, "base": figures, "n_pairs": N}` over `examples` (means over the pairs).

    `reference` None: the policy is its own reference (a base model judged alone)."""
    if not examples:
        raise InvalidRequestError("no preference pairs to evaluate on", param="file")
    collected: dict[str, dict[str, list[torch.Tensor]]] = {"model": {}, "base": {}}
    done = 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            if should_stop is not None and should_stop():
                raise InterruptedError("evaluation stopped")
            ids = list(range(start, min(start + batch_size, len(examples))))
            batch = pack([examples[i] for i in ids])
            if device is not None:
                batch = batch.to(device)
            sums, counts = policy(batch, ids)
            ref_sums = reference(batch, ids)[0] if reference is not None else sums
            mine = SequenceLogps.interleaved(sums.float(), counts.float())
            base = SequenceLogps.interleaved(ref_sums.float(), counts.float())
            for side, figures in (
                ("model", _figures(mine, base, beta)),
                ("base", _figures(base, base, beta)),
            ):
                for key, value in figures.items():
                    collected[side].setdefault(key, []).append(value)
            done += len(ids)
            if on_progress is not None:
                on_progress(done, len(examples))
    result: dict[str, Any] = {"n_pairs": len(examples), "beta": beta}
    for side, lists in collected.items():
        result[side] = {key: float(torch.cat(values).mean()) for key, values in lists.items()}
    return result


@dataclass
class Target:
    """What `evaluate` loads: an adapter on a base model, or a full model (with a base beside, or not)."""

    name: str
    base_path: Path
    adapter_path: Path | None = None
    model_path: Path | None = None


def resolve_target(model: str, base: str | None, models_dir: Path) -> Target:
    """`model`: an adapter directory, a `preftune train` output directory, a model directory or name.

    An adapter's base is `base` or the one its adapter_config.json names; a full model is compared
    with `base` when given, otherwise with itself (its figures are then the base model's)."""
    path = Path(model).expanduser()
    if (
        path.is_dir()
        and not (path / "adapter_config.json").is_file()
        and not (path / "config.json").is_file()
    ):
        for inner in ("adapter", "model"):  # the output directory of `preftune train`
            if (path / inner).is_dir():
                path = path / inner
                break
    if (path / "adapter_config.json").is_file():
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        base_name = base or config.get("base_model_name_or_path")
        if not base_name:
            raise InvalidRequestError(
                f"adapter {path} does not name its base model; pass --base", param="base"
            )
        return Target(model, resolve_model(str(base_name), models_dir), adapter_path=path)
    model_path = path.resolve() if (path / "config.json").is_file() else resolve_model(model, models_dir)
    base_path = resolve_model(base, models_dir) if base else model_path
    return Target(model, base_path, model_path=model_path)


def _load(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    return model.eval()


def evaluate(
    model: str,
    data_file: Path,
    *,
    models_dir: Path,
    base: str | None = None,
    beta: float = 0.1,
    max_length: int = 1024,
    batch_size: int = 8,
    precision: str = "fp32",
    on_progress: Progress | None = None,
    on_status: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Load `model` (and its base) and evaluate it on the preference pairs of `data_file`."""
    from transformers import AutoTokenizer

    from preftune.training.dataset import check_file, tokenize_file
    from preftune.training.logps import sequence_logps
    from preftune.training.modeling import select_autocast, select_device, set_threads

    say = on_status or (lambda _message: None)
    set_threads()
    spec = TrainingSpec(dpo_beta=beta, max_length=max_length, precision=precision)  # type: ignore[arg-type]
    data_format = check_file(Path(data_file), spec, "file")
    target = resolve_target(model, base, models_dir)
    device = select_device()
    autocast = select_autocast(precision, device)
    say(
        f"loading {target.base_path.name}"
        + (f" with adapter {target.adapter_path}" if target.adapter_path else "")
    )
    tokenizer = AutoTokenizer.from_pretrained(target.adapter_path or target.model_path or target.base_path)
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer = AutoTokenizer.from_pretrained(target.base_path)
    data = tokenize_file(Path(data_file), spec, tokenizer, param="file", data_format=data_format)
    examples = [e for e in data.examples if isinstance(e, PairTokens)]

    def run(module: Any) -> Forward:
        def forward(batch: PackedBatch, _ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            if autocast is None:
                return sequence_logps(module, batch)
            with torch.autocast(device_type=device.type, dtype=autocast):
                return sequence_logps(module, batch)

        return forward

    reference: Forward | None
    if target.adapter_path is not None:
        from peft import PeftModel

        peft_model: Any = PeftModel.from_pretrained(_load(target.base_path), target.adapter_path).to(device)
        peft_model.eval()
        policy = run(peft_model)
        plain = run(peft_model)

        def reference(batch: PackedBatch, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            with peft_model.disable_adapter():
                return plain(batch, ids)

    else:
        assert target.model_path is not None
        policy = run(_load(target.model_path).to(device))
        same = target.base_path == target.model_path
        reference = None if same else run(_load(target.base_path).to(device))
    say(f"evaluating on {len(examples)} pairs")
    result = evaluate_examples(
        examples,
        policy,
        reference,
        beta=beta,
        batch_size=batch_size,
        device=device,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    return {
        "object": "evaluation.result",
        "model_name": target.name,
        "base_model": str(target.base_path),
        "adapter": str(target.adapter_path) if target.adapter_path else None,
        "file": str(data_file),
        "max_length": max_length,
        "n_records": data.n_records,
        "truncation": data.stats.to_dict(),
        **result,
    }


def clean(result: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a diverged figure becomes null."""

    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return fix(result)  # type: ignore[no-any-return]
