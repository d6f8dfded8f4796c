"""Token statistics of a data file with a model's own tokenizer and chat template.

Shared by `preftune files check --model` and the API's `GET /v1/files/{id}/report?model=`:
prompts are rendered with the generation prompt and answers as the assistant turn that
follows, exactly as the trainer tokenises them (the counting itself is `preftune.data.token_stats`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from preftune.contracts.base_models import resolve_model
from preftune.data import Example, iter_examples
from preftune.data.token_stats import collect
from preftune.errors import PreftuneError


def token_statistics(
    path: Path,
    model: str,
    max_length: int,
    models_dir: Path,
    *,
    wrap: Callable[[Iterable[Example]], Iterable[Example]] | None = None,
) -> dict[str, Any]:
    """The report's `token_stats` for `path` (raises `PreftuneError` naming `model` when it cannot).

    `wrap` sees the examples on their way to the tokenizer (the CLI counts them for a progress bar).
    """
    from transformers import AutoTokenizer

    model_dir = resolve_model(model, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if getattr(tokenizer, "chat_template", None) is None:
        raise PreftuneError(
            f"model {model!r} has no chat template, so prompts cannot be rendered as the trainer "
            "would; pick a chat model",
            param="model",
            code="no_chat_template",
        )
    examples = iter_examples(path)
    return collect(tokenizer, wrap(examples) if wrap else examples, max_length, model).to_dict()
