"""Regenerate the README's table of training knobs from `TrainingSpec` (the single source of truth).

.venv/bin/python scripts/readme_knobs.py          # rewrite README.md in place
.venv/bin/python scripts/readme_knobs.py --check  # exit 1 if README.md is stale (used by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

from preftune.contracts.spec import TrainingSpec

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- knobs:start -->", "<!-- knobs:end -->"


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def knobs_table() -> str:
    lines = ["| knob | group | default | what it does |", "|---|---|---|---|"]
    for name, field in TrainingSpec.model_fields.items():
        group = (field.json_schema_extra or {}).get("group", "")  # type: ignore[union-attr]
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {group} | `{_default(field.default)}` | {description} |")
    return "\n".join(lines)


def render(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{knobs_table()}\n{END}{tail}"


def main() -> int:
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            print("README.md's knob table is stale: run .venv/bin/python scripts/readme_knobs.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
