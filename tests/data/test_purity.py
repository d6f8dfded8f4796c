"""The data layer is pure Python: importing it (and its converters) loads no torch and no web framework."""

from __future__ import annotations

import subprocess
import sys


def test_data_imports_no_torch_or_web_framework() -> None:
    code = (
        "import sys, preftune.data, preftune.data.convert, preftune.data.token_stats\n"
        "heavy = [m for m in ('torch', 'fastapi', 'starlette', 'transformers', 'sqlalchemy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
