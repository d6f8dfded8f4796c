"""The test harness (tests/helpers/, see tests/README.md): its fixtures are registered here for every
test directory; helper functions are imported as `from helpers.x import y`."""

from __future__ import annotations

import os

# Tests never touch the network or the user's real home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# preftune_home, tiny_model_dir, lively_model_dir, shared_data, orca_path, postgres_server, start_server.
pytest_plugins = ["helpers.fixtures"]
