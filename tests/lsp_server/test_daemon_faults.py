"""Faults under load through the real `fimble lsp`: the daemon SIGKILLed while three editors each
wait on a completion and one of them streams a chat answer. Every editor is served again by the
daemon its servers start, and the chat session keeps every turn, the cut one included. A data dir
that turns read-only gets the chat client a clear error and leaves the saved session whole.

How fast editors recover is measured by benchmarks/fault_recovery.py; the bound here is loose."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from tests.filesystems import remount_read_only, small_tmpfs
from tests.lsp_server.conftest import EMPTY_BODY, LONG, inline_at, multi_line_request, open_document, start_client, wait_until
from tests.lsp_server.test_chat import SHORT, Chat
from tests.lsp_server.test_chat import LONG as LONG_ANSWER
from tests.lsp_server.test_daemon_restart import daemon_pid

EDITORS = 3
RECOVERY_BOUND_S = 60.0  # loose: a guard against never recovering, not a speed test


async def served_again(client, uri: str, killed_at: float) -> float:
    """Seconds from the kill until this editor's invoked completion has items again."""
    loop = asyncio.get_running_loop()
    while loop.time() - killed_at < RECOVERY_BOUND_S:
        answer = await inline_at(client, uri, 2, 12, invoked=True)
        if answer is not None and answer.items:
            return loop.time() - killed_at
        await asyncio.sleep(0.05)
    raise AssertionError(f"no completion was served within {RECOVERY_BOUND_S} s of the kill")


async def test_sigkill_mid_completions_and_mid_chat_every_editor_recovers_and_no_turn_is_lost(fimble_env, daemon, tmp_path):
    env = {**fimble_env, "FIMBLE_DATA_DIR": str(tmp_path / "data")}
    editors = [Chat(await start_client(env, initialization_options=LONG)) for _ in range(EDITORS)]
    try:
        uris = [f"file:///work/editor{i}.py" for i in range(EDITORS)]
        for editor, uri in zip(editors, uris):
            open_document(editor.client, uri, EMPTY_BODY + "total = 1 + \n")
        chat = editors[0]
        first = await chat.ask("What does compute_backoff return?", maxTokens=SHORT)
        assert first["finishReason"] in ("stop", "length")
        session_id = first["sessionId"]

        # Load: every editor waits on a multi-line completion that never ends by itself, and one
        # streams a long chat answer.
        completions = [
            asyncio.ensure_future(editor.client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, multi_line_request(uri)))
            for editor, uri in zip(editors, uris)
        ]
        answer = asyncio.ensure_future(chat.ask("Explain it all", sessionId=session_id, maxTokens=LONG_ANSWER))
        await asyncio.wait_for(chat.first_chunk.wait(), 60)
        await wait_until(lambda s: s["running"] == EDITORS, daemon)
        old_pid = await daemon_pid()

        os.kill(old_pid, signal.SIGKILL)
        killed_at = asyncio.get_running_loop().time()

        # Everything in flight ends at once, with the text so far.
        for pending in completions:
            assert list((await asyncio.wait_for(pending, 10)).items) == []
        cut = await asyncio.wait_for(answer, 10)
        assert cut["finishReason"] == "error" and "daemon" in cut["notice"]
        assert cut["text"] == "".join(c["text"] for c in chat.chunks if c["messageIndex"] == 3)

        recovery_s = await asyncio.gather(*(served_again(editor.client, uri, killed_at) for editor, uri in zip(editors, uris)))
        assert all(0 < seconds < RECOVERY_BOUND_S for seconds in recovery_s)
        assert await daemon_pid() != old_pid

        # The session goes on in the new daemon, with every turn kept.
        follow_up = await chat.ask("Go on", sessionId=session_id, maxTokens=SHORT)
        assert follow_up["finishReason"] in ("stop", "length") and follow_up["messageIndex"] == 5
        stored = await chat.request("fimble/chatSessions", {"action": "get", "sessionId": session_id})
        assert stored["messages"] == [
            {"role": "user", "content": "What does compute_backoff return?", "finishReason": ""},
            {"role": "assistant", "content": first["text"], "finishReason": first["finishReason"]},
            {"role": "user", "content": "Explain it all", "finishReason": ""},
            {"role": "assistant", "content": cut["text"], "finishReason": "error"},
            {"role": "user", "content": "Go on", "finishReason": ""},
            {"role": "assistant", "content": follow_up["text"], "finishReason": follow_up["finishReason"]},
        ]
    finally:
        for editor in editors:
            await editor.stop()


async def test_a_read_only_data_dir_gets_the_chat_client_a_clear_error_and_keeps_the_session(fimble_env, tmp_path):
    with small_tmpfs(tmp_path / "fs") as data:
        chat = Chat(await start_client({**fimble_env, "FIMBLE_DATA_DIR": str(data)}))
        try:
            first = await chat.ask("What does compute_backoff return?", maxTokens=SHORT)
            session_file = Path(data) / "chats" / f"{first['sessionId']}.msgpack"
            saved = session_file.read_bytes()
            remount_read_only(data)

            with pytest.raises(JsonRpcException) as refused:
                await chat.ask("And then?", sessionId=first["sessionId"], maxTokens=SHORT)
            assert "could not save the chat session" in str(refused.value) and "Read-only file system" in str(refused.value)
            assert "Traceback" not in str(refused.value)
            assert any("could not save the chat session" in m.message for m in chat.client.messages)

            assert session_file.read_bytes() == saved
            stored = await chat.request("fimble/chatSessions", {"action": "get", "sessionId": first["sessionId"]})
            assert [m["content"] for m in stored["messages"]] == ["What does compute_backoff return?", first["text"]]
        finally:
            await chat.stop()
