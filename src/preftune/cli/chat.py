"""`preftune chat MODEL`: talk to a base or fine-tuned model from the terminal, tokens as they come.

    preftune chat ft:smollm2-135m-instruct::ftjob-…                    # interactive
    preftune chat ft:… --compare smollm2-135m-instruct                  # base and tuned side by side
    preftune chat ft:… --prompt "Summarise DPO in one line."            # one shot, for scripts and demos

In the interactive chat, `/reset` forgets the conversation and `/exit` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from preftune.cli.common import console, err_console, handle_errors, make_client
from preftune.errors import PreftuneError

EXIT_WORDS = {"/exit", "/quit", "exit", "quit"}


@dataclass
class Conversation:
    """One model's side of the chat: its own history, so each model sees its own earlier answers."""

    model: str
    system: str | None
    messages: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, prompt: str) -> list[dict[str, str]]:
        self.messages.append({"role": "user", "content": prompt})
        return list(self.messages)

    def answered(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})


def _chat_resource(client: Any) -> Any:
    # The SDK's Client attaches `chat`; build it from the transport if this build's Client does not.
    from preftune.client.chat import Chat

    return getattr(client, "chat", None) or Chat(client._transport)


Streamer = Callable[[str, list[dict[str, str]]], Iterator[str]]


def _stream_one(stream: Streamer, conversation: Conversation, prompt: str) -> str:
    """Print one answer as it streams; returns its text."""
    parts: list[str] = []
    for delta in stream(conversation.model, conversation.ask(prompt)):
        parts.append(delta)
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    text = "".join(parts)
    conversation.answered(text)
    return text


def _side_by_side(texts: list[str], conversations: list[Conversation], done: list[bool]) -> Table:
    table = Table.grid(expand=True, padding=(0, 1))
    for _ in conversations:
        table.add_column(ratio=1)
    panels = []
    for text, conversation, finished in zip(texts, conversations, done, strict=True):
        title = conversation.model + ("" if finished else " …")
        panels.append(
            Panel(Text(text), title=title, title_align="left", border_style="green" if finished else "cyan")
        )
    table.add_row(*panels)
    return table


def _stream_compare(stream: Streamer, conversations: list[Conversation], prompt: str) -> list[str]:
    """Both models answer the same prompt at once; their answers grow side by side."""
    texts = ["" for _ in conversations]
    done = [False for _ in conversations]
    errors: list[BaseException | None] = [None for _ in conversations]
    histories = [c.ask(prompt) for c in conversations]

    def pump(i: int) -> None:
        try:
            for delta in stream(conversations[i].model, histories[i]):
                texts[i] += delta
        except BaseException as exc:  # shown after the live view closes
            errors[i] = exc
        finally:
            done[i] = True

    threads = [threading.Thread(target=pump, args=(i,), daemon=True) for i in range(len(conversations))]
    for thread in threads:
        thread.start()
    if console.is_terminal:
        with Live(_side_by_side(texts, conversations, done), console=console, refresh_per_second=12) as live:
            while not all(done):
                live.update(_side_by_side(texts, conversations, done))
                threads[0].join(0.08)
            live.update(_side_by_side(texts, conversations, done))
    else:
        # Into a file or a pipe a live view cannot redraw: print the finished answers once. (It would
        # also end without a newline, gluing whatever is printed next to its last line.)
        for thread in threads:
            thread.join()
        console.print(_side_by_side(texts, conversations, done))
    for error in errors:
        if error is not None:
            raise error
    for conversation, text in zip(conversations, texts, strict=True):
        conversation.answered(text)
    return texts


def chat(
    model: str = typer.Argument(..., help="A base model or one of your fine-tuned models (ft:…)."),
    compare: str | None = typer.Option(
        None, "--compare", help="Another model (usually the base) answering the same prompts, side by side."
    ),
    system: str | None = typer.Option(None, "--system", help="A system message for the whole conversation."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Ask this once, print the answer, exit."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Most tokens per answer."),
    temperature: float = typer.Option(
        0.7, "--temperature", min=0.0, max=2.0, help="0 answers deterministically."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Same seed, same answer."),
) -> None:
    """Chat with a model in the terminal (streams tokens as they come)."""
    _run_chat(model, compare, system, prompt, max_tokens, temperature, seed)


@handle_errors
def _run_chat(
    model: str,
    compare: str | None,
    system: str | None,
    prompt: str | None,
    max_tokens: int,
    temperature: float,
    seed: int | None,
) -> None:
    with make_client() as client:
        resource = _chat_resource(client)

        def stream(name: str, messages: list[dict[str, str]]) -> Iterator[str]:
            return resource.stream_text(
                name, messages, max_tokens=max_tokens, temperature=temperature, seed=seed
            )

        conversations = [Conversation(model, system)] + ([Conversation(compare, system)] if compare else [])
        for conversation in conversations:
            conversation.reset()
        if prompt is not None:
            if compare:
                _stream_compare(stream, conversations, prompt)
            else:
                _stream_one(stream, conversations[0], prompt)
            return
        names = " vs ".join(c.model for c in conversations)
        err_console.print(f"chatting with [bold]{names}[/] — /reset to start over, /exit or Ctrl-D to leave")
        while True:
            try:
                line = console.input("[bold cyan]you>[/] ").strip()
            except (EOFError, KeyboardInterrupt):
                err_console.print()
                return
            if not line:
                continue
            if line in EXIT_WORDS:
                return
            if line == "/reset":
                for conversation in conversations:
                    conversation.reset()
                err_console.print("[dim]conversation cleared[/]")
                continue
            try:
                if compare:
                    _stream_compare(stream, conversations, line)
                else:
                    console.print(f"[bold green]{model}>[/] ", end="")
                    _stream_one(stream, conversations[0], line)
            except KeyboardInterrupt:  # stop this answer (closing the stream stops generation), keep chatting
                err_console.print("\n[dim]answer interrupted[/]")
                for conversation in conversations:
                    if conversation.messages and conversation.messages[-1]["role"] == "user":
                        conversation.messages.pop()
            except PreftuneError as exc:
                if exc.status_code < 500 and exc.status_code != 401:
                    where = f" [param: {exc.param}]" if exc.param else ""
                    err_console.print(f"[bold red]error:[/] {exc.message}{where}", highlight=False)
                    for conversation in conversations:
                        if conversation.messages and conversation.messages[-1]["role"] == "user":
                            conversation.messages.pop()
                    continue
                raise


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
