"""Real PEFT LoRA adapters with random weights, for tests, demos and benchmarks.

`get_peft_model` + random LoRA B weights (PEFT starts B at zero, which would make the adapter
a no-op) + `save_pretrained`: the same files the trainer writes, so serving code is tested on
exactly what it will serve.
"""

from __future__ import annotations

from pathlib import Path


def build_random_adapter(
    base_dir: Path, out_dir: Path, *, seed: int = 0, scale: float = 0.5, rank: int = 8
) -> Path:
    """Write a LoRA adapter for the model in `base_dir` whose output visibly differs from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out_dir / "adapter_config.json").is_file():
        return out_dir
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(str(out_dir))
    return out_dir
