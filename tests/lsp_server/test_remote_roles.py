"""Roles served by a remote OpenAI-compatible server, through the real `fimble lsp`: the server is
llama-cpp-python's, started by the test with the embedded model (tests/llama_server.py). Ghost text
from it, a chat streamed from it, and what the editor is told when it is down or refuses the key."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import REMOTE_KEY_ENV
from tests.lsp_server.conftest import FIMBLE, QUIET, inline_at, open_document, start_client
from tests.lsp_server.test_chat import Chat

FIB = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n    return \n\n\nprint(fibonacci(10))\n'


def remote_config(path, server, tiny_checkpoint, api_key_env: str = REMOTE_KEY_ENV):
    """single_line and chat on the server; multi_line on the tiny model in the daemon."""
    remote = f'source = "{server.base_url}"\napi_key_env = "{api_key_env}"\nlogprobs = false\n'
    path.write_text(
        f"[models.single_line]\n{remote}\n[models.chat]\n{remote}\n"
        f'[models.multi_line]\nsource = "{tiny_checkpoint}"\nquantization = "none"\ndevice = "cpu"\n'
    )
    return path


@pytest.fixture
def remote_env(fimble_env, llama_server, tiny_checkpoint, tmp_path):
    """The session's environment with the remote config, and a daemon of its own: a daemon serves
    the config it started with, so one shared with the session's tests would serve them this one
    (it is, when the session's daemon has gone idle and this test starts the next)."""
    config = remote_config(tmp_path / "config.toml", llama_server, tiny_checkpoint)
    with tempfile.TemporaryDirectory(prefix="fimble-remote-") as runtime_dir:  # short: AF_UNIX paths
        env = {**fimble_env, "FIMBLE_CONFIG": str(config), "FIMBLE_RUNTIME_DIR": runtime_dir, REMOTE_KEY_ENV: llama_server.api_key}
        env["FIMBLE_DATA_DIR"] = str(tmp_path / "data")
        yield env
        subprocess.run([*FIMBLE, "daemon", "stop"], env=env, capture_output=True, timeout=60)


async def messages_of(client) -> list[str]:
    return [message.message for message in client.messages]


async def test_ghost_text_comes_from_the_remote_server(remote_env):
    client = await start_client(remote_env, initialization_options=QUIET)
    try:
        open_document(client, "file:///work/fib.py", FIB)
        (item,) = (await inline_at(client, "file:///work/fib.py", 4, 11)).items
        # One line that fits the code: the server's prefix cache may round differently from one
        # run to the next, so the exact words of a 4-bit model are not pinned ("fib(n - 1)" is seen).
        offset = FIB.index("return \n") + len("return ")
        assert item.insert_text.strip() and "\n" not in item.insert_text and "n - 1" in item.insert_text.replace("n-1", "n - 1")
        compile(FIB[:offset] + item.insert_text + FIB[offset:], "fib.py", "exec")
    finally:
        await client.shutdown_session()
        await client.stop()


async def test_a_chat_answer_streams_from_the_remote_server(remote_env):
    chat = Chat(await start_client(remote_env))
    try:
        answer = await chat.ask("In one sentence: what does len() return in Python?", maxTokens=48)
        assert answer["finishReason"] in ("stop", "length") and answer["text"].strip()
        assert "".join(chunk["text"] for chunk in chat.chunks) == answer["text"] and len(chat.chunks) > 1
    finally:
        await chat.stop()


async def test_the_server_down_is_told_in_the_editor_and_completions_come_back_with_it(remote_env, llama_server):
    client = await start_client(remote_env, initialization_options=QUIET)
    try:
        open_document(client, "file:///work/fib.py", FIB)
        llama_server.stop()
        try:
            answer = await inline_at(client, "file:///work/fib.py", 4, 11)
            assert not answer.items
            assert any("cannot reach the model server" in m and "start the server" in m for m in await messages_of(client))
        finally:
            llama_server.start()
        answer = await inline_at(client, "file:///work/fib.py", 4, 11, invoked=True)
        assert answer.items and answer.items[0].insert_text.strip()
    finally:
        await client.shutdown_session()
        await client.stop()


async def test_a_wrong_key_is_told_in_the_editor_without_the_key(remote_env, llama_server, tiny_checkpoint, tmp_path):
    config = remote_config(tmp_path / "wrong.toml", llama_server, tiny_checkpoint, api_key_env="FIMBLE_WRONG_KEY")
    env = {**remote_env, "FIMBLE_CONFIG": str(config), "FIMBLE_WRONG_KEY": "sk-wrong-key-4242"}
    client = await start_client(env, initialization_options=QUIET)
    try:
        open_document(client, "file:///work/fib.py", FIB)
        assert not (await inline_at(client, "file:///work/fib.py", 4, 11)).items
        shown = await messages_of(client)
        assert any("refused the API key (401" in m and "set FIMBLE_WRONG_KEY to a valid key" in m for m in shown), shown
        assert not any("sk-wrong-key-4242" in m for m in shown)
        # The editor stays usable: multi-line still comes from the daemon's model.
        open_document(client, "file:///work/body.py", "def compute(values):\n    \n")
        multi = await asyncio.wait_for(inline_at(client, "file:///work/body.py", 1, 4, invoked=True), 120)
        assert multi is not None
    finally:
        await client.shutdown_session()
        await client.stop()


def test_fimble_models_asks_the_server_what_it_offers(remote_env, llama_server, tiny_checkpoint, tmp_path):
    with_logprobs = tmp_path / "logprobs.toml"
    with_logprobs.write_text(f'[models.single_line]\nsource = "{llama_server.base_url}"\napi_key_env = "{REMOTE_KEY_ENV}"\n')
    shown = {}
    for name, config in (("on", with_logprobs), ("off", remote_config(tmp_path / "off.toml", llama_server, tiny_checkpoint))):
        done = subprocess.run([sys.executable, "-m", "fimble", "models"], env={**remote_env, "FIMBLE_CONFIG": str(config)}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        shown[name] = next(line for line in done.stdout.splitlines() if line.startswith("single_line"))
    assert "qwen2.5-coder-0.5b-instruct (qwen2.5-coder), logprobs: yes" in shown["on"]
    assert "no logprobs: never abstains" in shown["off"]
