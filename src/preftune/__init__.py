"""preftune: self-hosted preference fine-tuning with an OpenAI-compatible API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from preftune.client import Client

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    # The SDK is imported lazily so that `import preftune` (used by the trainer's
    # child processes and the data layer) does not pull in httpx.
    if name == "Client":
        from preftune.client import Client

        return Client
    raise AttributeError(name)
