"""preftune.data: the data formats, streaming validation and converters. Pure Python (no torch, no web).

- `validate_file(path, *, max_errors=100) -> ValidationReport`: check a file before anything trains.
- `iter_examples(path)`: the canonical records (`PreferenceExample`, `SFTExample`) for the trainer.
- `preftune.data.convert`: other public preference formats into preftune's.
- `preftune.data.token_stats`: token-length statistics from a tokenizer (given by the caller).
"""

from preftune.data.types import (
    FORMATS,
    MAX_EXAMPLES,
    MIN_EXAMPLES,
    Example,
    Format,
    Issue,
    Message,
    PreferenceExample,
    SFTExample,
    ValidationReport,
)
from preftune.data.validate import iter_examples, validate_file

__all__ = [
    "FORMATS",
    "MAX_EXAMPLES",
    "MIN_EXAMPLES",
    "Example",
    "Format",
    "Issue",
    "Message",
    "PreferenceExample",
    "SFTExample",
    "ValidationReport",
    "iter_examples",
    "validate_file",
]
