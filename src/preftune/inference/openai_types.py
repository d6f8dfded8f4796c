"""The OpenAI chat-completions wire format: the request body, answers, stream chunks, model objects.

Request fields follow OpenAI's names, ranges and defaults so the official `openai` client
works unchanged; fields we do not implement (tools, logprobs, response_format, ...) are
refused with a 400 naming them rather than silently ignored. Pure pydantic, no torch.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from preftune.errors import InvalidRequestError
from preftune.inference.types import FinishReason, SamplingParams

MAX_N = 16
MAX_STOP = 4
# Accepted so the official client's usual calls work; they do not change our answers.
IGNORED_FIELDS = {
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "prediction",
    "modalities",
}
UNSUPPORTED_FIELDS = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "logprobs": "log-probabilities",
    "top_logprobs": "log-probabilities",
    "response_format": "structured output",
    "logit_bias": "logit bias",
    "audio": "audio output",
}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A base model (GET /v1/models) or one of your fine-tuned models (ft:…).")
    messages: list[dict[str, Any]] = Field(description="The conversation: roles system, user, assistant.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 is greedy (deterministic).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Newer name for max_tokens.")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 strings that end the answer.")
    seed: int | None = Field(default=None, description="Same seed, same answer (for one model and request).")
    n: int = Field(default=1, ge=1, le=MAX_N, description="How many answers to generate.")
    stream: bool = Field(default=False, description="Server-sent events, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return value

    def check_supported(self) -> None:
        for name in (self.model_extra or {}).keys() - IGNORED_FIELDS:
            feature = UNSUPPORTED_FIELDS.get(name)
            if feature is None:
                raise InvalidRequestError(f"unknown parameter '{name}' for chat completions.", param=name)
            if (self.model_extra or {}).get(name) not in (None, False, [], {}):
                raise InvalidRequestError(
                    f"{name}: {feature} is not supported by this server; remove '{name}' from the request.",
                    param=name,
                )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise InvalidRequestError(
                    f"{name} is not supported by this server; remove it or set it to 0.", param=name
                )
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed with stream: true.", param="stream_options"
            )

    def sampling(self, index: int = 0) -> SamplingParams:
        """Sampling settings of answer number `index` (each of `n` answers gets its own seed)."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=None if self.seed is None else self.seed + index,
        )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def finish_reason(reason: FinishReason) -> str:
    return "length" if reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_object(
    id_: str,
    model: str,
    created: int,
    choices: list[tuple[str, FinishReason]],
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(reason),
            }
            for i, (text, reason) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk_object(
    id_: str, model: str, created: int, index: int, delta: dict[str, Any], reason: FinishReason | None = None
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": index,
                "delta": delta,
                "logprobs": None,
                "finish_reason": None if reason is None else finish_reason(reason),
            }
        ],
    }


def usage_chunk(
    id_: str, model: str, created: int, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


class ModelObject(BaseModel):
    """GET /v1/models entries: OpenAI's fields plus where the model comes from and whether it is loaded."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str = Field(description="The base model the answers come from.")
    parent: str | None = Field(default=None, description="The base model a fine-tune was trained from.")
    kind: Literal["base", "fine-tuned"]
    loaded: bool = Field(description="In memory now (answers without a cold start).")


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A base model or one of your fine-tuned models.")
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1,
        description="1 keeps the model loaded; 0 records it but loads it on first request. The embedded "
        "engine serves one replica per server process.",
    )


class DeploymentObject(BaseModel):
    id: str = Field(description="deploy-…")
    object: Literal["deployment"] = "deployment"
    model: str
    min_replicas: int
    status: Literal["pending", "loading", "ready", "failed", "stopped"]
    created_at: int
    updated_at: int
    error: str | None = Field(default=None, description="Why loading failed, if it did.")
