"""From a data file to tokenised examples: validate, read the canonical records, tokenise, count cuts.

`preftune.data` owns the formats (validation, canonical records); this module only turns its
records into token lists for the method the spec asks for, and refuses a file that does not
validate or does not fit the method, naming the first problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune.contracts.spec import TrainingSpec
from preftune.errors import DataValidationError
from preftune.training.tokenize import (
    ChatTokenizer,
    PairTokens,
    SFTTokens,
    Skipped,
    TruncationStats,
    tokenize_pair,
    tokenize_sft_messages,
    tokenize_sft_prompt_completion,
    tokenize_sft_text,
)

SFT_FORMATS = ("sft_messages", "sft_prompt_completion", "sft_text")


@dataclass
class TokenizedData:
    examples: list[PairTokens] | list[SFTTokens]
    format: str
    n_records: int
    stats: TruncationStats = field(default_factory=TruncationStats)

    @property
    def n_tokens(self) -> int:
        return sum(e.length for e in self.examples)


def _describe(errors: list[Any], limit: int = 5) -> str:
    parts = []
    for error in errors[:limit]:
        line = getattr(error, "line", None)
        where = f"line {line}" if line is not None else "file"
        fld = getattr(error, "field", None)
        parts.append(f"{where}{' ' + fld if fld else ''}: {getattr(error, 'message', error)}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def check_file(path: Path, spec: TrainingSpec, param: str) -> str:
    """Validate `path` for `spec.training_method`; return its format or raise `DataValidationError`."""
    from preftune.data import validate_file

    if not path.is_file():
        raise DataValidationError(f"{param}: file {path} does not exist", param=param)
    report = validate_file(path)
    if not report.ok:
        raise DataValidationError(
            f"{param} {path.name} is not valid training data: {_describe(list(report.errors))}. "
            f"Run `preftune files check {path}` for the full report.",
            param=param,
            code="invalid_file",
        )
    if spec.training_method == "dpo" and report.format != "preference":
        raise DataValidationError(
            f"{param} {path.name} holds {report.format} data, but training_method=dpo needs preference pairs "
            "(input.messages, preferred_output, non_preferred_output). Use training_method=sft or convert it "
            "with `preftune data convert`.",
            param=param,
            code="wrong_format",
        )
    if spec.training_method == "sft" and report.format not in SFT_FORMATS:
        raise DataValidationError(
            f"{param} {path.name} holds {report.format} data; training_method=sft needs messages, "
            "prompt/completion or text records.",
            param=param,
            code="wrong_format",
        )
    return str(report.format)


def _train_on_inputs(spec: TrainingSpec, data_format: str) -> bool:
    if spec.train_on_inputs == "auto":
        return data_format == "sft_text"
    return bool(spec.train_on_inputs)


def tokenize_file(
    path: Path, spec: TrainingSpec, tokenizer: ChatTokenizer, *, param: str, data_format: str | None = None
) -> TokenizedData:
    """Validate (unless `data_format` says it was) and tokenise a whole file.

    Only the token lists, not the text, stay in memory.
    """
    from preftune.data import iter_examples

    if data_format is None:
        data_format = check_file(path, spec, param)
    stats = TruncationStats()
    on_inputs = _train_on_inputs(spec, data_format)
    examples: list[Any] = []
    n_records = 0
    for n_records, record in enumerate(iter_examples(path), start=1):
        out = _tokenize_record(record, n_records, data_format, spec, tokenizer, on_inputs, stats)
        if isinstance(out, Skipped):
            stats.skipped.append(out)
        else:
            examples.append(out)
    if not examples:
        first = stats.skipped[0].reason if stats.skipped else "the file holds no examples"
        raise DataValidationError(
            f"{param} {path.name}: no example can be trained on ({first}). Raise max_length (now "
            f"{spec.max_length}) or shorten the examples.",
            param=param,
            code="no_trainable_examples",
        )
    return TokenizedData(examples=examples, format=data_format, n_records=n_records, stats=stats)


def _tokenize_record(
    record: Any,
    index: int,
    data_format: str,
    spec: TrainingSpec,
    tokenizer: ChatTokenizer,
    train_on_inputs: bool,
    stats: TruncationStats,
) -> PairTokens | SFTTokens | Skipped:
    # Name examples by their line in the file when the reader knows it.
    index = int(getattr(record, "line", 0) or index)
    if data_format == "preference":
        return tokenize_pair(
            tokenizer,
            index,
            list(record.messages),
            dict(record.preferred),
            dict(record.non_preferred),
            spec.max_length,
            stats,
        )
    messages = list(record.messages)
    if data_format == "sft_prompt_completion" and len(messages) == 2:
        # prompt/completion is raw text (as the hosted services treat it), not a chat.
        return tokenize_sft_prompt_completion(
            tokenizer,
            index,
            messages[0]["content"],
            messages[1]["content"],
            spec.max_length,
            train_on_inputs,
            stats,
        )
    if data_format == "sft_text" or getattr(record, "from_text", False):
        return tokenize_sft_text(tokenizer, index, messages[-1]["content"], spec.max_length, stats)
    return tokenize_sft_messages(tokenizer, index, messages, spec.max_length, train_on_inputs, stats)
