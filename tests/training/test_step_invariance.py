"""One optimizer step is the same however it is cut (issue: RPO's gradient changed with the memory plan).

For every method, step 2 of a run (after a real update, so policy and reference differ) is computed
with the automatic memory plan, with one example per pass (`tokens_per_forward` at its minimum), and
with the batch split into gradient accumulation; loss, metrics and every gradient agree (fp32, 1e-5).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from preftune.contracts.spec import TrainingSpec
from preftune.training.callbacks import TrainCallbacks
from preftune.training.losses import step_normalisers
from preftune.training.step import accumulate
from preftune.training.trainer import _Run

METHODS = {
    "sigmoid": {},
    "length_normalized": {"dpo_normalize_logratios_by_length": True},
    "robust": {"dpo_label_smoothing": 0.2},
    "ipo": {"dpo_loss_type": "ipo"},
    "hinge": {"dpo_loss_type": "hinge"},
    "simpo": {"simpo_gamma": 0.5, "dpo_beta": 2.0},
    "rpo": {"rpo_alpha": 1.0},
    "simpo+rpo": {"simpo_gamma": 0.5, "dpo_beta": 2.0, "rpo_alpha": 1.0},
    "sigmoid, full fine-tuning": {"lora": False},
    "sft": {"training_method": "sft"},
}
# (batch_size, gradient_accumulation_steps, tokens_per_forward; None: the automatic plan), 4 examples a
# step in every cut: the whole step in one pass, the automatic plan, one example a pass, accumulation.
CUTS = [(4, 1, 1_000_000), (4, 1, None), (4, 1, 16), (2, 2, None), (1, 4, None)]


def _run(spec: TrainingSpec, model_dir: Path, data: Path, out: Path) -> _Run:
    run = _Run(spec, str(model_dir), data, out, None, model_dir.parent, False, TrainCallbacks())
    run.output_dir.mkdir(parents=True)
    run._load()
    run._plan()
    run._build_reference_cache()
    run.totals = {}
    run._begin(0)
    run.loop_started = run.started = 0.0
    run.start_step = 0
    return run


def _cut_step(
    run: _Run, step: int, batch_size: int, tokens_per_forward: int | None, plan: int
) -> dict[str, Any]:
    """Step `step`'s loss, metrics and gradients under one cut, without the optimizer step."""
    run.spec.batch_size = batch_size
    run.memory = dataclasses.replace(run.memory, tokens_per_forward=tokens_per_forward or plan)
    ids = run._step_examples(step)
    passes, padding = run._passes(ids)
    assert padding == 0  # one process: no padding passes
    run.optimizer.zero_grad(set_to_none=True)
    totals = accumulate(
        passes,
        step_normalisers([run.train_data.examples[i] for i in ids]),
        lambda p: run._loss_terms(run.train_data, "train", p),
        lambda: False,
    )
    grads = {
        name: p.grad.detach().clone()
        for name, p in run.policy.model.named_parameters()
        if p.requires_grad and p.grad is not None
    }
    return {"passes": len(passes), "loss": totals.loss, "metrics": totals.mean_metrics(), "grads": grads}


# Full fine-tuning holds a gradient for every weight, five cuts over: the slowest case, kept out of
# `make test-fast` (CI runs it).
SLOW = {"sigmoid, full fine-tuning"}


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in METHODS]
)
def test_a_step_does_not_depend_on_how_it_is_cut(
    method: str, lively_model_dir: Path, pairs_file: Path, sft_file: Path, tmp_path: Path
) -> None:
    params = {
        "max_length": 1024,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "precision": "fp32",
        "max_steps": 2,
        "seed": 3,
        **METHODS[method],
    }
    data = sft_file if method == "sft" else pairs_file
    run = _run(TrainingSpec(**params), lively_model_dir, data, tmp_path / "out")
    run._train_step(0)  # a real update: from here on the policy is not its reference
    baseline = None
    plan = run.memory.tokens_per_forward
    for batch_size, accumulation, tokens in CUTS:
        got = _cut_step(run, 1, batch_size, tokens, plan)
        if baseline is None:
            baseline = got
            assert got["passes"] == 1 and got["grads"]
            continue
        assert got["passes"] >= (4 if tokens == 16 else accumulation), (batch_size, accumulation, tokens)
        assert got["loss"] == pytest.approx(baseline["loss"], abs=1e-5, rel=1e-5)
        assert got["metrics"].keys() == baseline["metrics"].keys()
        for key, value in got["metrics"].items():
            assert value == pytest.approx(baseline["metrics"][key], abs=1e-5, rel=1e-5), key
        for name, grad in got["grads"].items():
            torch.testing.assert_close(grad, baseline["grads"][name], atol=1e-5, rtol=1e-5)
    if method not in ("sft", "simpo", "simpo+rpo"):
        assert (
            baseline is not None and baseline["metrics"]["rewards/margins"] != 0.0
        )  # policy moved off its reference
