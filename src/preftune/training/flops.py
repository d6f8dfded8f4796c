"""MFU: the model FLOPs of a training step, and the peak FLOP/s of one device.

Model FLOPs (PaLM's convention: the computation the method needs, not what an implementation
recomputes or skips). N is the transformer blocks' matmul weights (attention q, k, v, o and the
MLP), counted from the Hugging Face config; embeddings are lookups, not matmuls. Per token of the
packed rows (a pair's prompt once, then both answers):

- policy forward 2N;
- backward 2N through frozen weights (LoRA: activation gradients only; the adapters' own FLOPs are
  negligible) or 4N through trained ones (full fine-tuning: activation and weight gradients);
- reference forward 2N for methods with a reference model (DPO and its variants), however preftune
  gets the reference log-probs: LoRA's adapters switched off on the same rows, the first step's
  reuse of the policy's, the memo of later epochs, or full fine-tuning's cache computed before the
  loop. Like gradient checkpointing's recomputation, which is never counted, these shortcuts change
  the time a step takes, not its model FLOPs.

The output layer (d·V weights) runs only on the answer tokens (the trainer never builds the other
logits; `logit_tokens`), with the same factors. Attention's score and value products (growing with
the block's length) are left out, as in the usual 6N rule: at a few hundred tokens a block they add
well under a tenth.

The peak of one device (`device_peak_flops`): CUDA devices from a table of the vendors' dense
(no 2:4 sparsity) tensor-core numbers by device name, else a short measured matmul; the CPU a short
measured matmul on this process's threads, the better of `torch.mm` and, in float32, the pre-packed
oneDNN matmul the trainer's frozen layers use (`kernels.packed_linear`). A measured peak is the
practical one of a matmul this size, so a workload of larger matmuls can beat it: MFU is then over 1,
and reported as such (a clamp would hide that the peak is wrong); pass the device's real peak
(`peak_flops`) instead. Each peak is measured once per process and device, before the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from preftune.kernels import packed_linear
from preftune.training.tokenize import PairTokens, SFTTokens

# Model types whose MLP has no gate (two matrices, not three); every other decoder preftune trains
# (Llama, Qwen, Mistral, Gemma, Phi-3, SmolLM, ...) has a gated MLP.
UNGATED_MLP = frozenset({"gpt2", "gpt_neox", "gptj", "opt", "phi", "falcon", "bloom", "starcoder2"})


def block_matmul_params(config: Any) -> int:
    """N: the matmul weights of the transformer blocks of a Hugging Face decoder config."""
    config = getattr(config, "text_config", None) or config  # a multimodal config's language model
    d = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or d // heads)
    inter = int(getattr(config, "intermediate_size", None) or 4 * d)
    if getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None):
        raise ValueError(
            f"model FLOPs of a mixture-of-experts model ({config.model_type}) are not counted: "
            "only dense decoders are"
        )
    attention = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim  # q, o + k, v
    mlp = (2 if getattr(config, "model_type", "") in UNGATED_MLP else 3) * d * inter
    return int(config.num_hidden_layers) * (attention + mlp)


def output_layer_params(config: Any) -> int:
    """The output layer's matmul weights: d·V (tied to the embeddings or not, it is a matmul)."""
    config = getattr(config, "text_config", None) or config
    return int(config.hidden_size) * int(config.vocab_size)


def logit_tokens(example: PairTokens | SFTTokens) -> int:
    """Rows of the output layer an example runs: its answer tokens (the SFT targets)."""
    if isinstance(example, PairTokens):
        return len(example.chosen) + len(example.rejected)
    return sum(example.labels[1:])  # the first token is predicted by nothing


def model_flops(
    config: Any, tokens: int, logit_tokens: int, *, trained_weights: bool, reference: bool
) -> float:
    """Model FLOPs of one step (or any run of steps) over `tokens` packed tokens of which
    `logit_tokens` run the output layer (the module docstring's convention).

    `trained_weights`: full fine-tuning (weight gradients); False for LoRA's frozen base.
    `reference`: the method needs a reference model's log-probs."""
    # FLOPs per weight per row: a multiply and an add forward, two or four backward, two for the reference.
    factor = 2 + (4 if trained_weights else 2) + (2 if reference else 0)
    weight_rows = block_matmul_params(config) * tokens + output_layer_params(config) * logit_tokens
    return float(factor * weight_rows)


# --- the peak of one device ---------------------------------------------------------------------

# Dense (no 2:4 sparsity) peak TFLOP/s per GPU from the vendors' datasheets, which print the sparse
# figure, twice these, for the tensor cores: NVIDIA H100 and H200 (SXM, PCIe, NVL), A100, L4, L40S,
# A10 datasheets; the Ada Lovelace architecture whitepaper for the RTX 4090 (FP16/BF16 with FP32
# accumulation, what PyTorch runs); AMD's Instinct MI300X datasheet. AWS publishes no datasheet for
# its A10G, a lower-clocked A10: the A10's numbers slightly overstate it (MFU reads low, not high).
# "fp32" is the CUDA cores' FP32, what float32 matmuls run at the default "highest" matmul precision;
# "tf32" what they run at "high"/"medium". Entries are matched in order against the device's name
# (`torch.cuda.get_device_name`, e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"): every word
# of an entry must be a word of the name, and the more specific entries come first.
CUDA_PEAKS_TFLOPS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("H100", "PCIE"), {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (("H100", "NVL"), {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (("H100",), {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),  # SXM5
    (("H200", "NVL"), {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (("H200",), {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),  # SXM
    (("A100",), {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (("L40S",), {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (("L4",), {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (("A10G",), {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (("A10",), {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (("RTX", "4090"), {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    (("MI300X",), {"bf16": 1307.4, "fp16": 1307.4, "tf32": 653.7, "fp32": 163.4}),
)


@dataclass(frozen=True)
class Peak:
    """The peak FLOP/s of one device for one dtype, and where the number comes from."""

    flops: float
    source: str  # "table" (a vendor's number), "measured" (a matmul here) or "given" (peak_flops)


def dtype_key(dtype: torch.dtype) -> str:
    """The table's column for a compute dtype (float32 per the current matmul precision)."""
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def table_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """The vendor's dense peak FLOP/s for a CUDA device of this name, or None when not listed."""
    name = set(device_name.upper().replace("-", " ").split())
    for words, peaks in CUDA_PEAKS_TFLOPS:
        if all(word in name for word in words):  # whole words: "L4" is not "L40S", "A10" not "A100"
            return peaks[dtype_key(dtype)] * 1e12
    return None


def measured_matmul_peak(
    dtype: torch.dtype,
    device: torch.device,
    *,
    size: int | None = None,
    repeats: int = 3,
    budget_s: float = 0.3,
) -> float:
    """The best FLOP/s of a square matmul of `size` (1024 on the CPU, 4096 on an accelerator) in
    `dtype` on `device` with this process's threads: `repeats` timings of each product, fewer when
    they would take longer than `budget_s` (a slow dtype on a small CPU stays well under a second)."""
    n = size or (1024 if device.type == "cpu" else 4096)
    generator = torch.Generator().manual_seed(0)  # never the training run's random stream
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    products: list[Callable[[], torch.Tensor]] = [lambda: torch.mm(a, b)]
    if device.type == "cpu" and dtype == torch.float32 and packed_linear.available():
        # nn.Linear initialises its weight from the global generator: without the fork the probe
        # would shift the training run's random stream (dropout), and a resumed run would differ.
        with torch.random.fork_rng(devices=[]):
            layer = nn.Linear(n, n, bias=False).requires_grad_(False)
        packed_linear.pack_frozen_linears(layer)
        products.append(lambda: layer(a))
    best = 0.0
    for product in products:
        product()  # warm-up: first-call set-up (oneDNN primitives, CUDA handles) is not the peak
        spent = 0.0
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            product()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            took = time.perf_counter() - t
            best, spent = max(best, 2 * n**3 / took), spent + took
            if spent > budget_s / len(products):
                break
    return best


_MEASURED: dict[tuple[str, torch.dtype, str, int], float] = {}


def device_peak_flops(device: torch.device, dtype: torch.dtype, given: float | None = None) -> Peak:
    """The peak FLOP/s of one device computing in `dtype`: `given` when set (the caller knows its
    device), a CUDA device's datasheet number when the table lists it, else a matmul measured once
    per process (per device, dtype, matmul precision and thread count)."""
    if given is not None:
        if not given > 0:
            raise ValueError(f"peak_flops must be a positive FLOP/s figure, got {given!r}")
        return Peak(float(given), "given")
    if device.type == "cuda":
        listed = table_peak(torch.cuda.get_device_name(device), dtype)
        if listed is not None:
            return Peak(listed, "table")
    key = (str(device), dtype, torch.get_float32_matmul_precision(), torch.get_num_threads())
    if key not in _MEASURED:
        _MEASURED[key] = measured_matmul_peak(dtype, device)
    return Peak(_MEASURED[key], "measured")


def mfu(model_flops_per_s: float, world_size: int, peak: float) -> float:
    """Model FLOPs utilisation of one device: the run's (global) model FLOP/s shared over
    `world_size` devices, over one device's peak."""
    return model_flops_per_s / world_size / peak
