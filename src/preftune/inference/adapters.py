"""LoRA adapters on one base model: loaded by path into a single PEFT model, kept in an LRU.

Ten fine-tunes of one base cost one base model plus ten small adapters. A batch may mix
rows of different adapters (and of the plain base): PEFT's `adapter_names=` forward applies
each row's own LoRA delta, so rows never wait for a batch of their own adapter.
Not thread-safe: only the engine thread that runs the model touches it.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from preftune.errors import InvalidRequestError

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class AdapterCache:
    """Adapters loaded into `base` (wrapped in a `PeftModel` on first use), at most `capacity` of them."""

    def __init__(self, base: Any, capacity: int) -> None:
        self._base = base
        self.capacity = capacity
        self.model: Any = base  # what to call: the base model, or the PeftModel wrapping it
        self._names: OrderedDict[Path, str] = OrderedDict()  # path -> adapter name, least recent first
        self._counter = 0
        self.loads = 0  # adapters loaded from disk so far (evictions make a later request reload)

    @property
    def is_peft(self) -> bool:
        return self.model is not self._base

    def loaded(self) -> list[Path]:
        return list(self._names)

    def name_for(self, path: Path | None) -> str:
        """The adapter name of a loaded path (BASE for None); marks it recently used."""
        if path is None:
            return BASE
        self._names.move_to_end(path)
        return self._names[path]

    def peek(self, path: Path | None) -> str | None:
        """The adapter name of `path` if it is loaded (BASE for None), without marking it used."""
        return BASE if path is None else self._names.get(path)

    def can_load(self, path: Path | None, in_use: set[str]) -> bool:
        """True if `path` is loaded, or room can be made without evicting an adapter in use."""
        if path is None or path in self._names or len(self._names) < self.capacity:
            return True
        return any(name not in in_use for name in self._names.values())

    def ensure(self, path: Path | None, in_use: set[str]) -> str:
        """Load `path` if needed (evicting the least recently used idle adapter) and return its name."""
        if path is None or path in self._names:
            return self.name_for(path)
        name = f"a{self._counter}"
        self._counter += 1
        try:
            self._load(path, name)
        except Exception as exc:
            raise InvalidRequestError(
                f"the LoRA adapter at {path} cannot be applied to this base model: {exc}", param="model"
            ) from exc
        self.loads += 1
        self._names[path] = name
        # Evict only after loading, so the PEFT model always keeps at least one adapter.
        while len(self._names) > self.capacity:
            victim = next((p for p, n in self._names.items() if n not in in_use and p != path), None)
            if victim is None:
                break
            with warnings.catch_warnings():  # "adapter was active": expected, we pass adapter_names per row
                warnings.simplefilter("ignore", UserWarning)
                self.model.delete_adapter(self._names.pop(victim))
        return name

    def _load(self, path: Path, name: str) -> None:
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no adapter_config.json in {path}")
        if not self.is_peft:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(
                self._base, str(path), adapter_name=name, is_trainable=False
            )
            self.model.eval()
        else:
            self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
