"""Load the policy: base model, optional starting point (`from_checkpoint`), LoRA or full weights.

Also decides the device and the autocast precision (memory: `training.memory`), and provides
`reference_mode()`, which makes the same model in memory act as the DPO reference:
- LoRA from a fresh adapter: the adapters are disabled (the base model is the reference);
- LoRA continuing an earlier adapter (SFT then DPO): a frozen copy of that adapter, loaded
  under the name `reference`, is switched in (only the small LoRA weights are duplicated);
- full fine-tuning has no reference mode: the trainer caches reference log-probs up front.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError, TrainingSpecError
from preftune.kernels.autocast import cpu_has_fast_bf16
from preftune.kernels.elementwise import use_fast_elementwise
from preftune.kernels.fused import fuse_lora_layers
from preftune.kernels.liger import use_liger_kernels
from preftune.kernels.packed_linear import pack_frozen_linears

REFERENCE_ADAPTER = "reference"


@dataclass
class StartPoint:
    """What `from_checkpoint` points at, once resolved."""

    kind: Literal["adapter", "model"]
    path: Path


@dataclass
class Policy:
    model: nn.Module
    tokenizer: Any
    lora: bool
    reference_adapter: bool  # a frozen copy of a starting adapter serves as the reference
    device: torch.device
    autocast_dtype: torch.dtype | None
    gradient_checkpointing: bool
    kernels: str = "cpu"  # which kernels `bind_kernels` bound: cpu, liger or none

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def resolve_start_point(reference: str) -> StartPoint:
    """Accept an earlier output dir (its adapter/ or model/), a checkpoint dir, an adapter dir or a model dir."""
    root = Path(reference).expanduser()
    if not root.is_dir():
        raise TrainingSpecError(
            f"from_checkpoint: directory {root} does not exist. Give an earlier run's output directory, "
            "one of its checkpoints/step-N directories, or an adapter/model directory.",
            param="from_checkpoint",
        )
    for candidate in (root / "adapter", root / "model", root):
        if (candidate / "adapter_config.json").is_file():
            return StartPoint("adapter", candidate)
        if (candidate / "config.json").is_file():
            return StartPoint("model", candidate)
    steps = sorted(
        (p for p in (root / "checkpoints").glob("step-*") if p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    if steps:
        return resolve_start_point(str(steps[-1]))
    raise TrainingSpecError(
        f"from_checkpoint: {root} holds no adapter (adapter_config.json), model (config.json) or checkpoints/. "
        "Point it at an earlier run's output directory or one of its checkpoints.",
        param="from_checkpoint",
    )


def select_device(setting: str = "auto", local_rank: int = 0) -> torch.device:
    """The device to train on, from the `device` setting (PREFTUNE_DEVICE): auto, cpu, cuda, cuda:N.

    auto is CUDA where there is one, else the CPU. On CUDA each process of a launch takes the GPU
    of its local rank (LOCAL_RANK, one process per GPU); `cuda:N` pins a single process to GPU N.
    """
    choice = setting.strip().lower()
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if choice not in ("auto", "cuda") and not re.fullmatch(r"cuda:\d+", choice):
        raise InvalidRequestError(
            f"device {setting!r}: use auto, cpu, cuda or cuda:N", param="device", code="invalid_device"
        )
    if not torch.cuda.is_available():
        raise InvalidRequestError(
            f"device {setting!r}: this machine has no CUDA device (set device to auto or cpu)",
            param="device",
            code="invalid_device",
        )
    index = int(choice.split(":")[1]) if ":" in choice else local_rank
    if ":" in choice and local_rank > 0:
        raise InvalidRequestError(
            f"device {setting!r} pins one GPU, but this is local rank {local_rank}: use device cuda "
            "(or auto) with several processes per node, each takes the GPU of its LOCAL_RANK",
            param="device",
            code="invalid_device",
        )
    if index >= torch.cuda.device_count():
        raise InvalidRequestError(
            f"device cuda:{index}: this machine has {torch.cuda.device_count()} CUDA devices",
            param="device",
            code="invalid_device",
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def select_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` (None means plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def set_threads(processes_per_node: int = 1) -> None:
    """At most one thread per core this process may run on, the cores shared among the processes
    of a launch on this machine.

    torch's default (the machine's cores, or OMP_NUM_THREADS) is kept unless the CPU affinity mask
    (a container, taskset) allows fewer cores: more threads than cores makes every matmul wait.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    share = max(1, cores // max(1, processes_per_node))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), share)))


def _target_modules(spec: TrainingSpec) -> str | list[str]:
    if spec.lora_trainable_modules == "all-linear":
        return "all-linear"
    return spec.lora_trainable_modules.split(",")


def load_policy(spec: TrainingSpec, base_path: Path, device: torch.device) -> Policy:
    """Build the model to train, already on `device`, with only the trainable weights requiring grad."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = resolve_start_point(spec.from_checkpoint) if spec.from_checkpoint else None
    weights_path = start.path if start is not None and start.kind == "model" else base_path
    tokenizer = AutoTokenizer.from_pretrained(weights_path)
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer = AutoTokenizer.from_pretrained(base_path)
    model: Any = AutoModelForCausalLM.from_pretrained(
        weights_path, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.config.use_cache = False
    reference_adapter = False
    if start is not None and start.kind == "adapter":
        from peft import PeftModel

        if spec.lora:
            model = PeftModel.from_pretrained(model, start.path, is_trainable=True)
            if spec.needs_reference:
                model.load_adapter(str(start.path), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
                reference_adapter = True
        else:
            model = PeftModel.from_pretrained(model, start.path).merge_and_unload()
    elif spec.lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(spec.seed)  # LoRA's A matrices are initialised randomly
        try:
            config = LoraConfig(
                r=spec.lora_r,
                lora_alpha=spec.lora_alpha,
                lora_dropout=spec.lora_dropout,
                target_modules=_target_modules(spec),
                task_type="CAUSAL_LM",
            )
            with warnings.catch_warnings():
                # PEFT asks transformers a deprecated question; the warning means nothing to our users.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                model = get_peft_model(model, config)
        except ValueError as exc:
            raise TrainingSpecError(
                f"lora_trainable_modules: {exc}. Use all-linear or names such as q_proj,v_proj.",
                param="lora_trainable_modules",
            ) from None
    lora = spec.lora
    if lora:
        # Keep the trainable adapter active (loading the reference copy may not change that, but be explicit).
        model.set_adapter("default")
        fuse_lora_layers(model)
    model.to(device)
    autocast_dtype = select_autocast(spec.precision, device)
    kernels = bind_kernels(model, device, autocast_dtype)
    return Policy(
        model=model,
        tokenizer=tokenizer,
        lora=lora,
        reference_adapter=reference_adapter,
        device=device,
        autocast_dtype=autocast_dtype,
        gradient_checkpointing=False,
        kernels=kernels,
    )


def bind_kernels(model: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None) -> str:
    """Bind the kernels for `device` to `model`; returns which set: "cpu", "liger" or "none".

    The CPU kernels (packed frozen linears, RMSNorm and rotary with short backward passes) bind only
    on the CPU. On CUDA, Liger's kernels where `liger-kernel` is installed, else transformers' own
    code; attention is `kernels.attention` everywhere (on CUDA: SDPA, FlashAttention where it
    applies, over each packed block).
    """
    if device.type == "cpu":
        # The frozen base layers (all of them under LoRA): faster CPU matmuls, packed in the dtype they run in.
        pack_frozen_linears(model, autocast_dtype or torch.float32)
        use_fast_elementwise(model)  # RMSNorm and rotary embedding with short backward passes
        return "cpu"
    return "liger" if use_liger_kernels(model, device) else "none"


def enable_gradient_checkpointing(policy: Policy) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them."""
    model: Any = policy.model
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if policy.lora:
        model.enable_input_require_grads()
    policy.gradient_checkpointing = True


@contextlib.contextmanager
def reference_mode(policy: Policy) -> Iterator[None]:
    """Make the LoRA policy compute reference log-probs for the duration (call under no_grad)."""
    model: Any = policy.model
    if not policy.lora:
        raise RuntimeError("full fine-tuning uses cached reference log-probs, not reference_mode")
    if policy.reference_adapter:
        model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            # set_adapter also flips requires_grad: this puts the trainable adapter back as it was.
            model.set_adapter("default")
    else:
        with model.disable_adapter():
            yield
