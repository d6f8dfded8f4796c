"""The preftune Python SDK: `from preftune import Client; client = Client()`.

`Client()` finds the server and key the way the CLI does: `PREFTUNE_BASE_URL` and
`PREFTUNE_API_KEY` (through `preftune.config.Settings`), else the local server's key in
`PREFTUNE_HOME/credentials`. Results are pydantic models (`preftune.client.types`);
errors are `preftune.errors` exceptions carrying the server's message and `param`.
"""

from __future__ import annotations

from types import TracebackType

import httpx

from preftune.client._base import HTTPTransport
from preftune.client.chat import Chat
from preftune.client.deployments import Deployments
from preftune.client.errors import APIConnectionError, APIStatusError, RateLimitError, ServerError
from preftune.client.pagination import Page
from preftune.client.resources.evaluations import Evaluations
from preftune.client.resources.files import Files
from preftune.client.resources.fine_tuning import FineTuning
from preftune.client.resources.keys import Keys
from preftune.config import Settings

__all__ = ["APIConnectionError", "APIStatusError", "Client", "Page", "RateLimitError", "ServerError"]


def read_local_key(settings: Settings) -> str | None:
    """The key `preftune serve` wrote on first start (first line of the credentials file), if any."""
    try:
        first = settings.credentials_path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError):
        return None
    return first or None


class Client:
    """A connection to one preftune server. Use as a context manager, or call `close()`."""

    files: Files
    fine_tuning: FineTuning
    evaluations: Evaluations
    keys: Keys
    chat: Chat
    deployments: Deployments

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        settings: Settings | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        """`http_client`: your own `httpx.Client` (proxies, certificates, an in-process app); not closed
        by `close()`."""
        settings = settings or Settings()
        self.base_url = (base_url or settings.resolved_base_url).rstrip("/")
        self.api_key = api_key or settings.api_key or read_local_key(settings)
        self._transport = HTTPTransport(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http_client,
        )
        self.files = Files(self._transport)
        self.fine_tuning = FineTuning(self._transport)
        self.evaluations = Evaluations(self._transport)
        self.keys = Keys(self._transport)
        self.chat = Chat(self._transport)
        self.deployments = Deployments(self._transport)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"
