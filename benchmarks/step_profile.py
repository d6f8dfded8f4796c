"""Where one preftune DPO step spends its time, and what that leaves as a ceiling.

    .venv/bin/python benchmarks/step_profile.py                      # one step of 8 orca pairs
    .venv/bin/python benchmarks/step_profile.py --compile-elementwise # the same, norms/rotary/SiLU compiled

Runs the work of one optimizer step exactly as the trainer does it (the `train_vs_trl.py` knobs: LoRA
r=16 alpha=32 on all linear layers, max length 512, the first 8 orca pairs, packed and split into passes
of `tokens_per_forward`; reference forward then policy forward and backward per pass) under
`torch.profiler`, after one unprofiled warm-up step. Operators are put in three groups by their own
(self) time:
- matmul: `aten::mm`, `addmm`, `addmm_`, `bmm`, `mkldnn::_linear_pointwise` (the model's frozen layers as
  packed oneDNN matmuls, LoRA's linear layers, the output layer), with
  their achieved FLOP/s against a float32 matmul's measured speed on the same threads;
- attention: PyTorch's CPU flash-attention kernels, forward and backward;
- everything else (norms, rotary embedding, activations, residual adds, copies, the log-softmax).

The ceiling printed at the end is the step time if the third group took no time at all, and the speed-up
over the measured step that it would allow: no change to elementwise work alone can do better.
`--compile-elementwise` replaces the RMSNorm, rotary embedding and SiLU-times-up functions of the Llama
modules by `torch.compile`d versions (fused C++ kernels from inductor; needs a C++ compiler) to measure
what fusion actually buys here, compile time excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preftune.config import Settings
from preftune.contracts.base_models import DEFAULT_MODEL, resolve_model
from preftune.contracts.spec import TrainingSpec
from preftune.kernels.allocator import keep_freed_memory
from preftune.training.dataset import check_file, tokenize_file
from preftune.training.logps import sequence_logps
from preftune.training.memory import split_by_tokens
from preftune.training.modeling import load_policy, reference_mode, set_threads
from preftune.training.packing import pack
from train_vs_trl import KNOBS, ORCA, write_pairs

# addmm_: the streamed head's gradient; _linear_pointwise: the frozen layers' packed oneDNN matmuls.
PACKED_LINEAR = "mkldnn::_linear_pointwise"
MATMUL = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", PACKED_LINEAR}
ATTENTION = "flash_attention"  # aten::_scaled_dot_product_flash_attention_for_cpu(_backward)


def compile_elementwise() -> None:
    """Swap the Llama modules' norm, rotary and gated-activation code for torch.compile'd functions."""
    import transformers.models.llama.modeling_llama as llama

    @torch.compile(dynamic=True)
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    @torch.compile(dynamic=True)
    def rotary(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

        def rotate_half(x: torch.Tensor) -> torch.Tensor:
            half = x.shape[-1] // 2
            return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    @torch.compile(dynamic=True)
    def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(gate) * up

    def norm_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)

    def mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))

    llama.LlamaRMSNorm.forward = norm_forward  # type: ignore[method-assign,assignment]
    llama.LlamaMLP.forward = mlp_forward  # type: ignore[method-assign,assignment]
    llama.apply_rotary_pos_emb = lambda q, k, cos, sin, *a, **kw: rotary(q, k, cos, sin)


def matmul_peak(threads: int, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of a 2048-square matmul in `dtype` on `threads` threads."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=8, help="pairs in the step (default: one batch of 8)")
    parser.add_argument("--models-dir", default=None, help="default: PREFTUNE_HOME/models")
    parser.add_argument("--compile-elementwise", action="store_true")
    parser.add_argument("--top", type=int, default=0, help="also list the N operators with most own time")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="as the trainer's knob (auto: bf16 autocast where the CPU has native bf16, else fp32)",
    )
    args = parser.parse_args()
    if not ORCA.is_file():
        sys.exit(f"{ORCA} not found: this benchmark needs the shared orca sample next to the repository")

    set_threads()
    keep_freed_memory()  # as the trainer does
    if args.compile_elementwise:
        compile_elementwise()
    spec = TrainingSpec.from_params({**KNOBS, "batch_size": args.pairs, "precision": args.precision})
    models_dir = Path(args.models_dir) if args.models_dir else Settings().models_dir
    policy = load_policy(spec, resolve_model(DEFAULT_MODEL, models_dir), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        data = write_pairs(args.pairs, Path(tmp) / "pairs.jsonl")
        fmt = check_file(data, spec, "training_file")
        examples = tokenize_file(
            data, spec, policy.tokenizer, param="training_file", data_format=fmt
        ).examples
    budget = spec.tokens_per_forward if isinstance(spec.tokens_per_forward, int) else 2048
    runs = split_by_tokens(list(range(len(examples))), [e.length for e in examples], budget)
    passes = [pack([examples[i] for i in run]) for run in runs]
    model = policy.model
    dtype = policy.autocast_dtype or torch.float32

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if policy.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cpu", dtype=policy.autocast_dtype)

    def step() -> None:
        for batch in passes:
            model.eval()
            with torch.no_grad(), reference_mode(policy), autocast():
                sequence_logps(model, batch)
            model.train()
            with autocast():
                chosen_and_rejected, _ = sequence_logps(model, batch)
            chosen_and_rejected.sum().backward()
        model.zero_grad(set_to_none=True)

    # The matmul peak is measured before and after the steps and the better one kept: this VM's speed
    # drifts within minutes, and a peak taken at a slow moment alone once read 136% of itself.
    peak_before = matmul_peak(torch.get_num_threads(), dtype)
    start = time.perf_counter()
    step()  # warm-up (and, with --compile-elementwise, compilation)
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    step()
    plain = time.perf_counter() - start
    # Timed without shape recording (which with_flops needs and which inflates every operator's time),
    # then once more only to count the matmuls' FLOPs.
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as counted:
        step()
    matmul_flops = sum(e.flops or 0.0 for e in counted.key_averages() if e.key in MATMUL)
    # The profiler counts FLOPs of aten matmuls only: the packed linears' come from their shapes
    # (input [..., in], weight [out, in]).
    for event in counted.key_averages(group_by_input_shape=True):
        if event.key == PACKED_LINEAR and event.input_shapes:
            x, w = event.input_shapes[0], event.input_shapes[1]
            matmul_flops += 2 * math.prod(x) * w[0] * event.count

    groups = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key in MATMUL:
            groups["matmul"] += seconds
        elif ATTENTION in event.key:
            groups["attention"] += seconds
        else:
            groups["other"] += seconds
    total = sum(groups.values())
    peak = max(peak_before, matmul_peak(torch.get_num_threads(), dtype))
    ceiling = groups["matmul"] + groups["attention"]

    print(
        f"\n{len(examples)} pairs, {sum(b.n_tokens for b in passes)} tokens in {len(passes)} passes "
        f"{[b.n_tokens for b in passes]}; {torch.get_num_threads()} threads"
    )
    print(
        f"warm-up step {warm_up:.1f} s; step {plain:.1f} s; profiled step {total:.1f} s (operators' own time)"
    )
    for name, seconds in groups.items():
        print(f"  {name:10} {seconds:7.1f} s  {100 * seconds / total:5.1f}%")
    print(
        f"matmul: {matmul_flops / 1e9:.0f} GFLOP at {matmul_flops / groups['matmul'] / 1e9:.1f} GFLOP/s, "
        f"{100 * matmul_flops / groups['matmul'] / peak:.0f}% of a 2048-square {str(dtype).removeprefix('torch.')} matmul "
        f"({peak / 1e9:.1f} GFLOP/s)"
    )
    if args.top:
        print(f"top {args.top} operators by own time (calls, seconds, share):")
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        for event in events[: args.top]:
            seconds = event.self_cpu_time_total / 1e6
            print(f"  {event.key:60} {event.count:7d} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
    print(
        f"ceiling with free elementwise work: {ceiling:.1f} s a step, {total / ceiling:.2f}x the profiled step"
    )


if __name__ == "__main__":
    main()
