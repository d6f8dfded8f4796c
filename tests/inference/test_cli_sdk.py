"""`preftune chat`, `preftune deployments` and the SDK's chat/deployments resources against the real server.

The server runs the lively model, whose answers depend on the prompt, so comparing two answers
(whole and streamed, CLI and SDK, before and after /reset, base and adapter) can catch a mix-up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from preftune.cli.chat import Conversation, _stream_compare
from preftune.cli.main import app
from preftune.client import Client
from preftune.client.chat import Chat
from preftune.client.deployments import Deployments


@pytest.fixture
def cli_env(lively_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("PREFTUNE_BASE_URL", lively_server.base_url)
    monkeypatch.setenv("PREFTUNE_API_KEY", lively_server.api_key)
    return lively_server


@pytest.fixture
def sdk(cli_env: Any) -> Iterator[tuple[Chat, Deployments]]:
    client = Client(api_key=cli_env.api_key, base_url=cli_env.base_url)
    try:
        yield Chat(client._transport), Deployments(client._transport)
    finally:
        client.close()


HELLO = [{"role": "user", "content": "hello"}]


def test_sdk_chat_whole_and_streamed_agree(sdk: tuple[Chat, Deployments]) -> None:
    chat, _ = sdk
    answer = chat.create("tiny-llama", HELLO, max_tokens=6, temperature=0)
    assert answer.usage is not None and answer.usage.completion_tokens == 6
    assert "".join(chat.stream_text("tiny-llama", HELLO, max_tokens=6, temperature=0)) == answer.text
    chunks = list(chat.stream("tiny-llama", HELLO, max_tokens=6, temperature=0))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    # Another prompt, another answer: the agreement above is not one answer for everything.
    other = chat.create("tiny-llama", [{"role": "user", "content": "goodbye"}], max_tokens=6, temperature=0)
    assert other.text != answer.text


def test_cli_one_shot_prints_the_answer(cli_env: Any, sdk: tuple[Chat, Deployments]) -> None:
    expected = sdk[0].create("tiny-llama", HELLO, max_tokens=6, temperature=0).text
    result = CliRunner().invoke(
        app, ["chat", "tiny-llama", "--prompt", "hello", "--max-tokens", "6", "--temperature", "0"]
    )
    assert result.exit_code == 0, result.output
    assert result.output == expected + "\n"


def test_cli_interactive_keeps_history_and_resets(cli_env: Any) -> None:
    result = CliRunner().invoke(
        app,
        ["chat", "tiny-llama", "--max-tokens", "3", "--temperature", "0", "--system", "be brief"],
        input="hello\nand again\n/reset\nhello\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    # Each answer line reads "you> tiny-llama> <answer>" (the prompt is not echoed when input is piped).
    answers = [
        line.split("tiny-llama>", 1)[1] for line in result.output.splitlines() if "tiny-llama>" in line
    ]
    assert len(answers) == 3
    assert answers[1] != answers[0]  # the second turn is answered in the light of the first
    assert answers[0] == answers[2]  # after /reset the same first question gets the same (greedy) answer


def test_cli_unknown_model_is_a_clear_error(cli_env: Any) -> None:
    result = CliRunner().invoke(app, ["chat", "nope-model", "--prompt", "hi"])
    assert result.exit_code == 4
    assert "nope-model" in result.output and "not found" in result.output


def test_compare_streams_both_models_on_the_same_prompt(
    cli_env: Any, sdk: tuple[Chat, Deployments], adapter_dirs: list[Path]
) -> None:
    chat, _ = sdk
    tuned = cli_env.register_fine_tune(adapter_dirs[1], suffix="cmp")

    def stream(model: str, messages: list[dict[str, str]]) -> Iterator[str]:
        return chat.stream_text(model, messages, max_tokens=5, temperature=0)

    conversations = [Conversation(tuned, None), Conversation("tiny-llama", None)]
    texts = _stream_compare(stream, conversations, "hello")
    assert texts == [chat.create(m, HELLO, max_tokens=5, temperature=0).text for m in (tuned, "tiny-llama")]
    assert texts[0] != texts[1]
    assert conversations[0].messages[-1] == {"role": "assistant", "content": texts[0]}
    result = CliRunner().invoke(
        app,
        [
            "chat",
            tuned,
            "--compare",
            "tiny-llama",
            "--prompt",
            "hello",
            "--max-tokens",
            "5",
            "--temperature",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tiny-llama" in result.output and tuned[:20] in result.output
    # Not a terminal: the finished panels are printed once, ending their line.
    assert result.output.count("╭─") == 2 and result.output.endswith("\n")


def test_cli_deployments_create_list_delete(cli_env: Any, adapter_dirs: list[Path]) -> None:
    tuned = cli_env.register_fine_tune(adapter_dirs[0], suffix="dep")
    runner = CliRunner()
    created = runner.invoke(app, ["deployments", "create", tuned, "--json"])
    assert created.exit_code == 0, created.output
    deployment = json.loads(created.output)
    assert deployment["status"] == "ready" and deployment["model"] == tuned
    listed = json.loads(runner.invoke(app, ["deployments", "list", "--json"]).output)
    assert deployment["id"] in [d["id"] for d in listed]
    deleted = runner.invoke(app, ["deployments", "delete", deployment["id"]])
    assert deleted.exit_code == 0 and deployment["id"] in deleted.output
    missing = runner.invoke(app, ["deployments", "retrieve", deployment["id"]])
    assert missing.exit_code == 4
    refused = runner.invoke(app, ["deployments", "create", "no-such-model"])
    assert refused.exit_code == 4 and "no-such-model" in refused.output
