"""MFU (`training.flops`): the model-FLOPs count against a hand count and the model's own modules,
the peak table and the measured peak, and `mfu`/`model_flops_per_s` in a real run's metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError
from preftune.training import flops
from preftune.training.dataset import tokenize_file
from preftune.training.packing import pack
from preftune.training.tokenize import PairTokens, SFTTokens
from preftune.training.trainer import train

CPU = torch.device("cpu")
# 3 layers; attention q, o 8x8 and k, v 8x4 (one of two heads' width); MLP gate, up, down 8x12.
TINY = {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 12}
TINY_N = 3 * (8 * 8 * 2 + 8 * 4 * 2 + 3 * 8 * 12)  # 1440
TINY_HEAD = 8 * 10  # d x V


def tiny_llama() -> LlamaConfig:
    return LlamaConfig(num_hidden_layers=3, vocab_size=10, **TINY)


def block_linear_weights(model: nn.Module) -> int:
    """The matmul weights inside the decoder layers, read off the built model."""
    layers = model.model.layers  # type: ignore[union-attr]
    return sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear))


def test_a_tiny_config_counts_what_a_hand_count_and_its_modules_say() -> None:
    config = tiny_llama()
    assert flops.block_matmul_params(config) == TINY_N == 1440
    assert flops.block_matmul_params(config) == block_linear_weights(LlamaForCausalLM(config))
    assert flops.output_layer_params(config) == TINY_HEAD
    rows = 1440 * 5 + 80 * 3  # 5 packed tokens, 3 of them answers
    # LoRA DPO: forward 2, backward through frozen weights 2, reference forward 2 per weight and row.
    assert flops.model_flops(config, 5, 3, trained_weights=False, reference=True) == 6 * rows == 44640
    assert flops.model_flops(config, 5, 3, trained_weights=False, reference=False) == 4 * rows  # LoRA SimPO
    assert flops.model_flops(config, 5, 3, trained_weights=True, reference=False) == 6 * rows  # full SFT
    assert flops.model_flops(config, 5, 3, trained_weights=True, reference=True) == 8 * rows  # full DPO


def test_a_head_dim_of_its_own_and_a_mixture_of_experts() -> None:
    config = Qwen3Config(num_hidden_layers=2, vocab_size=10, head_dim=16, **TINY)  # heads wider than d/heads
    assert flops.block_matmul_params(config) == 2 * (8 * 32 * 2 + 8 * 16 * 2 + 3 * 8 * 12)
    assert flops.block_matmul_params(config) == block_linear_weights(Qwen3ForCausalLM(config))
    with pytest.raises(ValueError, match="mixture-of-experts"):
        flops.block_matmul_params(MixtralConfig(num_hidden_layers=1, **TINY))


def test_logit_rows_are_the_packed_batch_s_gathered_rows() -> None:
    pair = PairTokens(index=1, prompt=[1, 2, 3], chosen=[4, 5], rejected=[6, 7, 8])
    sft = SFTTokens(index=2, ids=[1, 2, 3, 4], labels=[True, False, True, True])
    assert flops.logit_tokens(pair) == 5 == pack([pair]).gather.numel()
    assert flops.logit_tokens(sft) == 2 == pack([sft]).gather.numel()  # the first token has no predictor


@pytest.mark.parametrize(
    ("name", "dtype", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.5),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),
        ("NVIDIA H100 NVL", torch.float16, 835.5),
        ("NVIDIA H200", torch.bfloat16, 989.5),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
        ("NVIDIA A100 80GB PCIe", torch.float32, 19.5),
        ("NVIDIA L4", torch.bfloat16, 121.0),
        ("NVIDIA L40S", torch.bfloat16, 362.05),
        ("NVIDIA A10G", torch.float32, 31.2),
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165.2),
        ("Tesla T4", torch.float16, None),
    ],
)
def test_the_table_knows_gpus_by_name(name: str, dtype: torch.dtype, tflops: float | None) -> None:
    assert flops.table_peak(name, dtype) == (None if tflops is None else tflops * 1e12)


def test_float32_peaks_follow_the_matmul_precision() -> None:
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores
        assert flops.table_peak("NVIDIA H100 80GB HBM3", torch.float32) == 494.5e12
    finally:
        torch.set_float32_matmul_precision(before)
    assert flops.table_peak("NVIDIA H100 80GB HBM3", torch.float32) == 67.0e12


def test_the_cpu_peak_is_measured_quickly_once_and_can_be_given() -> None:
    for dtype in (torch.float32, torch.bfloat16):  # bf16 may have no fast kernels here: still short
        started = time.perf_counter()
        measured = flops.measured_matmul_peak(dtype, CPU)
        took = time.perf_counter() - started
        assert measured > 1e8 and took < 1.0, (dtype, measured, took)
    first = flops.device_peak_flops(CPU, torch.float32)
    assert first.source == "measured" and first.flops > 1e8
    again = time.perf_counter()
    assert flops.device_peak_flops(CPU, torch.float32) == first  # cached: the same number, no new matmuls
    assert time.perf_counter() - again < 0.01
    assert flops.device_peak_flops(CPU, torch.float32, given=2.5e12) == flops.Peak(2.5e12, "given")
    with pytest.raises(ValueError, match="peak_flops"):
        flops.device_peak_flops(CPU, torch.float32, given=0.0)


def _lines(out: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["split"] == "train"]


def test_a_run_reports_mfu_per_step_and_in_its_report(
    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    # One epoch of all 16 pairs: the run's model FLOPs are those of every pair once.
    spec = TrainingSpec(max_length=64, batch_size=4, learning_rate=1e-3, precision="fp32", n_epochs=1)
    out = tmp_path / "run"
    train(
        spec, model=str(tiny_model_dir), training_file=pairs_file, output_dir=out, models_dir=tmp_path / "m"
    )
    lines = _lines(out)
    assert len(lines) == 4
    for line in lines:
        # A tiny model on a CPU is all overhead: far below the matmul peak, but above nothing.
        assert 0 < line["mfu"] <= 1, line["mfu"]
        assert line["model_flops_per_s"] > 0
    report = json.loads((out / "train_report.json").read_text())
    assert report["peak_flops_source"] == "measured" and report["peak_flops"] > 0
    assert 0 < report["mfu"] <= 1
    assert report["mfu"] == pytest.approx(report["model_flops_per_s"] / report["peak_flops"], rel=1e-12)

    config = AutoConfig.from_pretrained(tiny_model_dir)
    data = tokenize_file(
        pairs_file, spec, AutoTokenizer.from_pretrained(tiny_model_dir), param="training_file"
    )
    examples = data.examples
    assert report["tokens_seen"] == sum(e.length for e in examples)
    expected = flops.model_flops(
        config,
        report["tokens_seen"],
        sum(flops.logit_tokens(e) for e in examples),
        trained_weights=False,
        reference=True,
    )
    assert report["model_flops"] == expected


def test_a_given_peak_is_the_denominator(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    spec = TrainingSpec(max_length=48, batch_size=4, precision="fp32", max_steps=2, lora=False)
    out = tmp_path / "run"
    train(
        spec,
        model=str(tiny_model_dir),
        training_file=pairs_file,
        output_dir=out,
        models_dir=tmp_path / "m",
        peak_flops=3e9,
    )
    for line in _lines(out):
        assert line["mfu"] == pytest.approx(line["model_flops_per_s"] / 3e9, rel=1e-12)
    report = json.loads((out / "train_report.json").read_text())
    assert report["peak_flops"] == 3e9 and report["peak_flops_source"] == "given"
    with pytest.raises(InvalidRequestError, match="peak_flops") as caught:
        train(
            spec,
            model=str(tiny_model_dir),
            training_file=pairs_file,
            output_dir=tmp_path / "bad",
            models_dir=tmp_path / "m",
            peak_flops=-1.0,
        )
    assert caught.value.param == "peak_flops"
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_preftune_peak_flops_reaches_the_cli_s_run(
    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path, preftune_home: Path
) -> None:
    from typer.testing import CliRunner

    from preftune.cli.main import app

    out = tmp_path / "run"
    flags = ["train", "-t", str(pairs_file), "-m", str(tiny_model_dir), "-o", str(out), "--max-steps", "1",
             "--max-length", "48", "--batch-size", "4", "--precision", "fp32"]  # fmt: skip
    result = CliRunner().invoke(app, flags, env={"PREFTUNE_PEAK_FLOPS": "4e9"})
    assert result.exit_code == 0, result.output
    report = json.loads((out / "train_report.json").read_text())
    assert report["peak_flops"] == 4e9 and report["peak_flops_source"] == "given"
    bad = CliRunner().invoke(app, flags, env={"PREFTUNE_PEAK_FLOPS": "0"})
    assert bad.exit_code == 2 and "PREFTUNE_PEAK_FLOPS: Input should be greater than 0" in bad.output


def test_the_peak_probe_leaves_the_training_random_stream_alone() -> None:
    # A resumed run restores the generator's state; a probe drawing from it would shift dropout.
    from preftune.training.flops import measured_matmul_peak

    before = torch.random.get_rng_state()
    measured_matmul_peak(torch.float32, torch.device("cpu"), size=64, repeats=1)
    assert torch.equal(torch.random.get_rng_state(), before)
