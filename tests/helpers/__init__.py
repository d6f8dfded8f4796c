"""Helpers shared by test modules. Tests run with `--import-mode=importlib`, so test modules cannot
import each other or a conftest; pytest's `pythonpath` puts `tests/` on the path for this package."""
