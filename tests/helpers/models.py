"""Tiny random chat models built from a config (nothing is downloaded), and installing one as a
server's named base model."""

from __future__ import annotations

import shutil
from pathlib import Path

# The name under which tests install a tiny model as a server's base model.
TINY_NAME = "tiny-llama"


def build_tiny(dest: Path) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template, saved at `dest`."""
    from preftune.training.tiny import build_tiny_model

    return build_tiny_model(dest)


def build_lively(tiny: Path, dest: Path) -> Path:
    """The tiny model at `tiny` re-initialised with larger weights, saved at `dest`.

    The tiny model's small random weights answer every prompt with the same token, whatever it attends
    to; these answers depend on every earlier token and its position, so a wrong cached KV (or position)
    changes them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(tiny))
    config.initializer_range = 0.3
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(dest)
    AutoTokenizer.from_pretrained(str(tiny)).save_pretrained(dest)
    return dest


def install_base_model(home: Path, model_dir: Path, name: str = TINY_NAME) -> Path:
    """Copy `model_dir` into `home`'s models directory as the named base model `name`."""
    target = home / "models" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, target, dirs_exist_ok=True)
    return target
