"""Chat messages in, prompt token ids out: role checks, the model's chat template, end-of-turn tokens.

The model's own chat template renders the conversation (with the generation prompt
appended), so a fine-tune trained on that template is asked the way it was trained.
Generation stops at any of the model's end-of-turn / end-of-sequence tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from preftune.errors import InvalidRequestError

ALLOWED_ROLES = ("system", "user", "assistant")
# OpenAI's newer name for the system role; rendered as "system" for open models.
ROLE_ALIASES = {"developer": "system"}
# End-of-turn markers of common chat templates that some configs forget to list as eos.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise InvalidRequestError(
                    f"messages[{index}].content[{j}] must be a text part {{'type': 'text', 'text': '...'}}; "
                    "this server's models read text only.",
                    param=f"messages[{index}].content[{j}]",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequestError(
        f"messages[{index}].content must be a string or a list of text parts.",
        param=f"messages[{index}].content",
    )


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """Check roles and contents; return plain `{"role", "content"}` dicts ready for the template."""
    if not messages:
        raise InvalidRequestError(
            "messages is empty: send at least one message, e.g. [{'role': 'user', 'content': 'Hello'}].",
            param="messages",
        )
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(
                f"messages[{i}] must be an object with role and content.", param=f"messages[{i}]"
            )
        role = message.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ALLOWED_ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role is {message.get('role')!r}; allowed roles are "
                f"{', '.join(ALLOWED_ROLES)} (and developer, read as system).",
                param=f"messages[{i}].role",
            )
        if message.get("content") is None:
            raise InvalidRequestError(f"messages[{i}].content is missing.", param=f"messages[{i}].content")
        out.append({"role": role, "content": _content_text(message["content"], i)})
    if out[-1]["role"] == "assistant":
        raise InvalidRequestError(
            "the last message is the assistant's; end with a user (or system) message for the model to answer.",
            param=f"messages[{len(out) - 1}].role",
        )
    return out


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the conversation as the model's chat template writes it, ready for the answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError(
            "this model has no chat template, so it cannot take chat messages; use an instruction-tuned model "
            "or add a chat_template to its tokenizer_config.json.",
            param="model",
        )
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template already writes any BOS token; adding special tokens again would double it.
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def end_of_turn_ids(tokenizer: Any, generation_eos: int | list[int] | None) -> frozenset[int]:
    """Every token id that ends the assistant's turn for this model."""
    ids: set[int] = set()
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos:
        ids.update(int(i) for i in generation_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab and token in tokenizer.all_special_tokens:
            ids.add(int(vocab[token]))
    return frozenset(ids)
