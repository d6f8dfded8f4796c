"""`client.chat`: chat completions against a base or fine-tuned model, whole or streamed.

    answer = client.chat.create("ft:smollm2-135m-instruct::ftjob-…", [{"role": "user", "content": "Hi"}])
    print(answer.text)
    for delta in client.chat.stream_text(model, messages):   # tokens as they come
        print(delta, end="", flush=True)

The wire format is OpenAI's (`/v1/chat/completions`), so these objects have its field names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from preftune.client._base import HTTPTransport
from preftune.errors import PreftuneError

__all__ = ["Chat", "ChatChoice", "ChatCompletion", "ChatCompletionChunk", "Usage", "stream_chat"]


class _Object(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Usage(_Object):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(_Object):
    role: str
    content: str | None = None


class ChatChoice(_Object):
    index: int
    message: ChatMessage
    finish_reason: str | None = None


class ChatCompletion(_Object):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The first answer's text."""
        return self.choices[0].message.content or "" if self.choices else ""


class ChunkDelta(_Object):
    role: str | None = None
    content: str | None = None


class ChunkChoice(_Object):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None


class ChatCompletionChunk(_Object):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


def _body(model: str, messages: Sequence[dict[str, Any]], **options: Any) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), **{k: v for k, v in options.items() if v is not None}}


def stream_chat(
    transport: HTTPTransport, model: str, messages: Sequence[dict[str, Any]], **options: Any
) -> Iterator[ChatCompletionChunk]:
    """Stream `chat.completion.chunk`s as the server sends them (server-sent events).

    Leaving the loop early closes the connection, which stops the generation on the server.
    """
    body = _body(model, messages, stream=True, stream_options={"include_usage": True}, **options)
    with transport.stream("/chat/completions", method="POST", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                return
            payload = json.loads(data)
            if "error" in payload:
                error = payload["error"]
                raise PreftuneError(
                    str(error.get("message")), param=error.get("param"), code=error.get("code")
                )
            yield ChatCompletionChunk.model_validate(payload)


class Chat:
    """Chat completions. Options are OpenAI's: `max_tokens`, `temperature`, `top_p`, `stop`, `seed`, `n`."""

    def __init__(self, transport: HTTPTransport) -> None:
        self._t = transport

    def create(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
    ) -> ChatCompletion:
        """The whole answer at once (loads the model first if it is not deployed: a cold start)."""
        body = _body(
            model,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            n=n,
        )
        # Not retried: a generation is not idempotent without a seed, and a retry doubles the work.
        return ChatCompletion.model_validate(
            self._t.request("POST", "/chat/completions", json=body, retry=False)
        )

    def stream(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[ChatCompletionChunk]:
        """Chunks as they are generated; the last one carries `usage`."""
        return stream_chat(
            self._t,
            model,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
        )

    def stream_text(self, model: str, messages: Sequence[dict[str, Any]], **options: Any) -> Iterator[str]:
        """Just the answer's text, piece by piece."""
        for chunk in self.stream(model, messages, **options):
            for choice in chunk.choices:
                if choice.delta.content:
                    yield choice.delta.content
