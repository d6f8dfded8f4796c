"""The data layer's typed values: canonical examples, one reported problem, and the validation report.

Everything here is plain Python (dataclasses), so the service can store a report as JSON and the
trainer can consume examples without importing anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Message = dict[str, str]
"""One chat message: `{"role": "system" | "user" | "assistant", "content": str}`."""

Format = Literal["preference", "sft_messages", "sft_prompt_completion", "sft_text"]
FORMATS: tuple[Format, ...] = ("preference", "sft_messages", "sft_prompt_completion", "sft_text")
FORMAT_NAMES: dict[str, str] = {
    "preference": "preference data (input / preferred_output / non_preferred_output)",
    "sft_messages": "SFT `messages` data",
    "sft_prompt_completion": "SFT `prompt` + `completion` data",
    "sft_text": "SFT `text` data",
}

MIN_EXAMPLES = 3
MAX_EXAMPLES = 3_000_000


@dataclass(frozen=True, slots=True)
class PreferenceExample:
    """A preference pair: the conversation so far and two candidate assistant answers."""

    messages: list[Message]
    preferred: Message
    non_preferred: Message
    line: int = 0  # 1-based line in the source file (0 when built in memory)


@dataclass(frozen=True, slots=True)
class SFTExample:
    """An SFT conversation, normalised from any of the three SFT formats.

    - `messages` rows keep their messages;
    - `prompt` + `completion` rows become `[user: prompt, assistant: completion]`;
    - `text` rows become `[assistant: text]` with `from_text=True`: plain text, no chat template,
      every token a target.
    `source_format` says which of the three the row was, for a trainer that treats raw
    prompt/completion text differently from a chat conversation.
    """

    messages: list[Message]
    from_text: bool = False
    source_format: Format = "sft_messages"
    line: int = 0


Example = PreferenceExample | SFTExample


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem (error or warning): where it is and what to do about it.

    `line` is 1-based (None for problems of the whole file), `field` the JSON path inside the
    line (`non_preferred_output[0].role`; None for the line as a whole), `code` a stable
    machine-readable name (`invalid_role`, `duplicate_example`, ...).
    """

    line: int | None
    field: str | None
    message: str
    code: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message, "code": self.code}

    def __str__(self) -> str:
        where = [] if self.line is None else [f"line {self.line}"]
        if self.field:
            where.append(self.field)
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass
class ValidationReport:
    """What `validate_file` found. `ok` is True when the file can be trained on."""

    path: str
    format: Format | None = None
    n_examples: int = 0  # non-blank lines, valid or not
    n_valid: int = 0
    n_lines: int = 0
    n_bytes: int = 0
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    n_errors_total: int = 0
    n_warnings_total: int = 0
    max_errors: int = 100
    stats: dict[str, Any] = field(default_factory=dict)
    token_stats: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.n_errors_total == 0

    def add_error(self, line: int | None, field_path: str | None, message: str, code: str) -> None:
        self.n_errors_total += 1
        # Problems of the whole file (line None) are always listed: there are few, and they matter most.
        if len(self.errors) < self.max_errors or line is None:
            self.errors.append(Issue(line, field_path, message, code))

    def add_warning(self, line: int | None, field_path: str | None, message: str, code: str) -> None:
        self.n_warnings_total += 1
        if len(self.warnings) < self.max_errors:
            self.warnings.append(Issue(line, field_path, message, code))

    @property
    def n_errors_hidden(self) -> int:
        return self.n_errors_total - len(self.errors)

    @property
    def n_warnings_hidden(self) -> int:
        return self.n_warnings_total - len(self.warnings)

    def summary(self) -> str:
        """One sentence for a file's `status_details`."""
        what = FORMAT_NAMES.get(self.format or "", "unknown format")
        if self.ok:
            note = f", {self.n_warnings_total} warning(s)" if self.n_warnings_total else ""
            return f"{self.n_examples} examples of {what}{note}"
        first = str(self.errors[0]) if self.errors else ""
        return f"{self.n_errors_total} error(s) in {self.n_examples} examples of {what}; first: {first}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "format": self.format,
            "n_examples": self.n_examples,
            "n_valid": self.n_valid,
            "n_lines": self.n_lines,
            "n_bytes": self.n_bytes,
            "n_errors_total": self.n_errors_total,
            "n_errors_hidden": self.n_errors_hidden,
            "n_warnings_total": self.n_warnings_total,
            "n_warnings_hidden": self.n_warnings_hidden,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
            "stats": dict(self.stats),
            "token_stats": self.token_stats,
            "summary": self.summary(),
        }
