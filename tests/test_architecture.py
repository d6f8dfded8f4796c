"""The import rules of docs/ARCHITECTURE.md hold in the code.

The rules are read from the document itself, so the page and the test cannot drift apart. Every
`import preftune.x...` / `from preftune.x... import` in src/ (lazy imports inside functions too)
must name the importing module's own room or one its rule allows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import preftune

SRC = Path(preftune.__file__).resolve().parent
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


def read_rules(text: str) -> dict[str, set[str]]:
    """`room: allowed allowed ...` lines between the import-rules markers."""
    block = re.search(r"<!-- import-rules:start -->(.*?)<!-- import-rules:end -->", text, re.S)
    assert block, "docs/ARCHITECTURE.md has no import-rules block"
    rules: dict[str, set[str]] = {}
    for line in block.group(1).splitlines():
        if ":" not in line or line.startswith("```"):
            continue
        room, allowed = line.split(":", 1)
        rules[room.strip()] = {a for a in allowed.split() if a != "-"}
    return rules


def imports_of(source: str) -> list[tuple[int, str]]:
    """(line, module) of every preftune import in `source`, below the package name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("preftune."):
                found.append((node.lineno, node.module.removeprefix("preftune.")))
            elif node.module == "preftune":
                # `from preftune import __version__` reads the package root, which every room may.
                found += [
                    (node.lineno, a.name)
                    for a in node.names
                    if (SRC / a.name).exists() or (SRC / f"{a.name}.py").exists()
                ]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, alias.name.removeprefix("preftune."))
                for alias in node.names
                if alias.name.startswith("preftune.")
            ]
    return found


def room_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def allowed(target: str, rule: set[str]) -> bool:
    """`target` (e.g. `inference.types.X`) matches a rule entry `inference` or `inference.types`."""
    return any(target == entry or target.startswith(entry + ".") for entry in rule)


def violations(rules: dict[str, set[str]]) -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        room = room_of(path)
        if room not in rules:
            found.append(f"{path.relative_to(SRC)}: room {room!r} has no line in docs/ARCHITECTURE.md")
            continue
        for line, target in imports_of(path.read_text(encoding="utf-8")):
            if target.split(".")[0] == room:
                continue
            if not allowed(target, rules[room]):
                found.append(f"{path.relative_to(SRC)}:{line}: {room} may not import preftune.{target}")
    return found


def test_the_rules_name_every_room_once() -> None:
    rules = read_rules(ARCHITECTURE.read_text(encoding="utf-8"))
    rooms = {room_of(p) for p in SRC.rglob("*.py")}
    assert rooms == set(rules), f"rooms in src/ {sorted(rooms)} vs rules {sorted(rules)}"


def test_every_import_follows_the_rules() -> None:
    rules = read_rules(ARCHITECTURE.read_text(encoding="utf-8"))
    assert violations(rules) == []


def test_the_check_catches_a_forbidden_arrow(tmp_path: Path) -> None:
    # inference importing the trainer is the arrow the kernels room exists to remove.
    rules = read_rules(ARCHITECTURE.read_text(encoding="utf-8"))
    source = "import torch\ndef f():\n    from preftune.training.trainer import train\n"
    targets = [t for _, t in imports_of(source)]
    assert targets == ["training.trainer"]
    assert not allowed("training.trainer", rules["inference"])
    assert allowed("inference.types", rules["service"])
    assert not allowed("inference.local", rules["service"])
    assert not any(allowed("api", rule) for room, rule in rules.items() if room != "cli")
