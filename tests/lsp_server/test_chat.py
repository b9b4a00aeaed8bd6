"""Chat through the real `fimble lsp` and the session's daemon (chat role: the tiny random-weight
model): streamed chunks, cancellation that reaches the engine, sessions that outlive the server,
corrupt session files, code actions, applying a code block, and malformed requests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Union

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled

from tests.lsp_server.conftest import open_document, start_client

SHORT = 24  # answer tokens when the test needs only some text
LONG = 1500  # an answer that runs until it is cancelled (the tiny model rarely stops by itself)


def as_dict(value):
    """Custom messages reach the client as dicts or as pygls named tuples, depending on its version."""
    if hasattr(value, "_asdict"):
        value = value._asdict()
    if isinstance(value, dict):
        return {key: as_dict(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_dict(item) for item in value]
    return value


@pytest.fixture
def chat_env(fimble_env, tmp_path):
    """The session's daemon, with a sessions folder of this test's own."""
    return {**fimble_env, "FIMBLE_DATA_DIR": str(tmp_path / "data")}


class Chat:
    """A started `fimble lsp` and the chat notifications it sent."""

    def __init__(self, client):
        self.client = client
        self.chunks: list[dict] = []
        self.opened: list[dict] = []
        self.edits: list[types.ApplyWorkspaceEditParams] = []
        self.first_chunk = asyncio.Event()

        @client.feature("fimble/chatChunk")
        def on_chunk(params):
            self.chunks.append(as_dict(params))
            self.first_chunk.set()

        @client.feature("fimble/openChat")
        def on_open_chat(params):
            self.opened.append(as_dict(params))

        # lsprotocol reads every code action that carries a command as a bare Command (its hook looks
        # for a "command" key only); a CodeAction's command is an object, a Command's a string.
        converter = client.protocol._converter
        converter.register_structure_hook(
            Union[types.Command, types.CodeAction],
            lambda value, _: converter.structure(value, types.Command if isinstance(value.get("command"), str) else types.CodeAction),
        )

        @client.feature(types.WORKSPACE_APPLY_EDIT)
        def on_apply_edit(params: types.ApplyWorkspaceEditParams):
            self.edits.append(params)
            return types.ApplyWorkspaceEditResult(applied=True)

    async def request(self, method: str, params):
        return as_dict(await self.client.protocol.send_request_async(method, params))

    async def ask(self, message: str, **fields):
        return await self.request("fimble/chat", {"message": message, **fields})

    async def command(self, name: str, argument):
        return as_dict(await self.client.workspace_execute_command_async(types.ExecuteCommandParams(command=name, arguments=[argument])))

    async def stop(self):
        await self.client.shutdown_session()
        await self.client.stop()


@pytest.fixture
async def chat(chat_env):
    session = Chat(await start_client(chat_env))
    yield session
    await session.stop()


async def chat_status(daemon) -> dict:
    return (await daemon.status())["roles"]["chat"]


async def wait_for_chat(daemon, predicate, timeout_s: float = 30.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status = await chat_status(daemon)
        if status["state"] == "ready" and predicate(status):
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the chat role never satisfied the condition: {status}")
        await asyncio.sleep(0.05)


async def test_a_chat_request_streams_chunks_whose_concatenation_is_the_answer(chat):
    result = await chat.ask("Why does the client retry twice?", maxTokens=48)
    assert result["finishReason"] in ("stop", "length")
    assert len(chat.chunks) >= 2
    assert "".join(chunk["text"] for chunk in chat.chunks) == result["text"]
    assert {(c["sessionId"], c["messageIndex"]) for c in chat.chunks} == {(result["sessionId"], 1)}
    assert result["messageIndex"] == 1 and result["droppedTurns"] == 0
    follow_up = await chat.ask("And then?", sessionId=result["sessionId"], maxTokens=SHORT)
    assert follow_up["sessionId"] == result["sessionId"] and follow_up["messageIndex"] == 3


async def test_chat_cancel_stops_the_generation_in_the_engine_and_keeps_the_text(chat, daemon):
    before = await wait_for_chat(daemon, lambda s: True, timeout_s=120)
    pending = asyncio.ensure_future(chat.ask("Explain the whole project", maxTokens=LONG))
    await asyncio.wait_for(chat.first_chunk.wait(), 60)
    await wait_for_chat(daemon, lambda s: s["running"] == 1)
    session_id = chat.chunks[0]["sessionId"]
    assert await chat.request("fimble/chatCancel", {"sessionId": session_id}) is None
    result = await asyncio.wait_for(pending, 30)
    assert result["finishReason"] == "cancelled"
    after = await wait_for_chat(daemon, lambda s: s["running"] == 0 and s["cancelled"] > before["cancelled"], timeout_s=10)
    assert after["running"] == 0
    # The partial answer is what was streamed, and it is stored.
    assert result["text"] == "".join(chunk["text"] for chunk in chat.chunks)
    stored = await chat.request("fimble/chatSessions", {"action": "get", "sessionId": session_id})
    assert stored["messages"][-1] == {"role": "assistant", "content": result["text"], "finishReason": "cancelled"}


async def test_sessions_persist_across_a_server_restart(chat_env):
    first = Chat(await start_client(chat_env))
    answer = await first.ask("What does compute_backoff return?", maxTokens=SHORT)
    await first.stop()

    second = Chat(await start_client(chat_env))
    try:
        listing = await second.request("fimble/chatSessions", {"action": "list"})
        assert listing["problems"] == []
        assert [(s["id"], s["title"], s["messages"]) for s in listing["sessions"]] == [
            (answer["sessionId"], "What does compute_backoff return?", 2)
        ]
        session = await second.request("fimble/chatSessions", {"action": "get", "sessionId": answer["sessionId"]})
        assert session["messages"] == [
            {"role": "user", "content": "What does compute_backoff return?", "finishReason": ""},
            {"role": "assistant", "content": answer["text"], "finishReason": answer["finishReason"]},
        ]
        assert await second.request("fimble/chatSessions", {"action": "delete", "sessionId": answer["sessionId"]}) == {"deleted": True}
        assert (await second.request("fimble/chatSessions", {"action": "list"}))["sessions"] == []
    finally:
        await second.stop()


async def test_a_corrupt_session_file_is_reported_and_left_untouched(chat, chat_env):
    chats = Path(chat_env["FIMBLE_DATA_DIR"]) / "chats"
    chats.mkdir(parents=True, exist_ok=True)
    corrupt = chats / ("ab" * 16 + ".msgpack")
    corrupt.write_bytes(b"\xc1 not msgpack")
    listing = await chat.request("fimble/chatSessions", {"action": "list"})
    assert listing["sessions"] == []
    assert len(listing["problems"]) == 1 and str(corrupt) in listing["problems"][0]
    with pytest.raises(JsonRpcException, match="cannot be read"):
        await chat.request("fimble/chatSessions", {"action": "get", "sessionId": "ab" * 16})
    assert corrupt.read_bytes() == b"\xc1 not msgpack"


async def test_apply_code_block_sends_the_workspace_edit(chat):
    uri = "file:///work/apply.py"
    open_document(chat.client, uri, "def f():\n    return 1\n")
    target = {"start": {"line": 1, "character": 4}, "end": {"line": 1, "character": 12}}
    result = await chat.command("fimble.applyCodeBlock", {"uri": uri, "code": "return 2", "range": target})
    assert result == {"applied": True, "reason": ""}
    (edit,) = chat.edits
    assert {key: list(value) for key, value in edit.edit.changes.items()} == {uri: [types.TextEdit(range=types.Range(start=types.Position(1, 4), end=types.Position(1, 12)), new_text="return 2")]}
    # An empty range inserts at its start.
    here = {"start": {"line": 2, "character": 0}, "end": {"line": 2, "character": 0}}
    await chat.command("fimble.applyCodeBlock", {"uri": uri, "code": "x = 1\n", "range": here})
    assert chat.edits[1].edit.changes[uri][0].range == types.Range(start=types.Position(2, 0), end=types.Position(2, 0))
    with pytest.raises(JsonRpcException, match="uri"):
        await chat.command("fimble.applyCodeBlock", {"code": "x"})


async def test_code_actions_on_a_selection_open_the_chat_with_it(chat):
    uri = "file:///work/actions.py"
    open_document(chat.client, uri, "def add(a, b):\n    return a - b\n")
    selection = types.Range(start=types.Position(0, 0), end=types.Position(1, 16))

    def actions_at(range_):
        return chat.client.text_document_code_action_async(
            types.CodeActionParams(text_document=types.TextDocumentIdentifier(uri=uri), range=range_, context=types.CodeActionContext(diagnostics=[]))
        )

    actions = await actions_at(selection)
    assert [action.title for action in actions] == ["Fimble: Explain", "Fimble: Fix", "Fimble: Write tests"]
    assert not await actions_at(types.Range(start=types.Position(1, 4), end=types.Position(1, 4)))

    fix = actions[1].command
    assert fix.command == "fimble.chatAbout"
    await chat.command(fix.command, fix.arguments[0])
    wire_range = {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 16}}
    for _ in range(100):
        if chat.opened:
            break
        await asyncio.sleep(0.05)
    assert chat.opened == [
        {"prompt": "Find the bugs in this code and fix them", "attachments": [{"kind": "selection", "uri": uri, "range": wire_range}]}
    ]


async def test_a_selection_attachment_is_read_from_the_open_buffer(chat, tmp_path):
    path = tmp_path / "buffer.py"
    path.write_text("on disk\n")
    uri = path.as_uri()
    open_document(chat.client, uri, "def unsaved():\n    return 42\n")
    selection = {"kind": "selection", "uri": uri, "range": {"start": {"line": 1, "character": 4}, "end": {"line": 1, "character": 13}}}
    result = await chat.ask("What is this?", attachments=[selection], maxTokens=4)
    assert result["finishReason"] in ("stop", "length")
    from fimble.chat.session import SessionStore

    stored = SessionStore(Path(tmp_path / "data" / "chats")).load(result["sessionId"])
    assert [(a.kind, a.text, a.start_line, a.end_line) for a in stored.attachments] == [("selection", "return 42", 1, 1)]


@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, "message"),
        ({"message": ""}, "message"),
        ({"message": "hi", "sessionId": 42}, "sessionId"),
        ({"message": "hi", "sessionId": "0" * 32}, "no chat session"),
        ({"message": "hi", "sessionId": "../etc/passwd"}, "no chat session"),
        ({"message": "hi", "attachments": [{"kind": "picture"}]}, "attachments[0].kind: 'picture' is not allowed; must be one of 'selection', 'file', 'symbol'"),
        ({"message": "hi", "attachments": [{"kind": "file", "uri": 7}]}, "attachments[0].uri: expected str"),
        ({"message": "hi", "colour": "red"}, "unknown key(s) 'colour'"),
        ({"message": "hi", "attachments": [{"kind": "file", "uri": "file:///nowhere/x.py"}]}, "does not exist"),
        ({"message": "hi", "attachments": [{"kind": "file", "uri": "file:///home/me/.env"}]}, "secret"),
        ({"message": "hi", "maxTokens": 0}, "maxTokens"),
        (None, "expected a map, got NoneType"),
    ],
)
async def test_a_malformed_chat_request_gets_a_clear_error_and_the_server_goes_on(chat, params, expected):
    with pytest.raises(JsonRpcException, match=re.escape(expected)) as raised:
        await chat.request("fimble/chat", params)
    assert raised.value.code == -32602
    listing = await chat.request("fimble/chatSessions", {"action": "list"})
    assert listing == {"sessions": [], "problems": []}  # nothing was stored
    with pytest.raises(JsonRpcException, match="action"):
        await chat.request("fimble/chatSessions", {"action": "rename"})


async def test_cancel_request_on_a_chat_keeps_the_partial_answer(chat, daemon):
    await wait_for_chat(daemon, lambda s: True, timeout_s=120)
    pending = asyncio.ensure_future(chat.client.protocol.send_request_async("fimble/chat", {"message": "Explain it all", "maxTokens": LONG}, msg_id="chat-1"))
    await asyncio.wait_for(chat.first_chunk.wait(), 60)
    chat.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="chat-1"))
    with pytest.raises(JsonRpcRequestCancelled):
        await pending
    await wait_for_chat(daemon, lambda s: s["running"] == 0, timeout_s=10)
    session_id = chat.chunks[0]["sessionId"]
    for _ in range(100):  # the server saves the partial answer as the request ends
        stored = await chat.request("fimble/chatSessions", {"action": "get", "sessionId": session_id})
        if len(stored["messages"]) == 2:
            break
        await asyncio.sleep(0.05)
    assert stored["messages"][1]["finishReason"] == "cancelled"
    assert stored["messages"][1]["content"] == "".join(chunk["text"] for chunk in chat.chunks)


async def test_the_daemon_dies_mid_answer_the_text_so_far_is_kept_and_the_user_told(chat, daemon):
    await wait_for_chat(daemon, lambda s: True, timeout_s=120)
    pending = asyncio.ensure_future(chat.ask("Explain it all", maxTokens=LONG))
    await asyncio.wait_for(chat.first_chunk.wait(), 60)
    pid = (await daemon.status())["pid"]
    os.kill(pid, signal.SIGKILL)
    result = await asyncio.wait_for(pending, 10)
    assert result["finishReason"] == "error" and "daemon" in result["notice"]
    assert result["text"] == "".join(chunk["text"] for chunk in chat.chunks)
    assert any("daemon" in m.message for m in chat.client.messages)
    stored = await chat.request("fimble/chatSessions", {"action": "get", "sessionId": result["sessionId"]})
    assert stored["messages"][1] == {"role": "assistant", "content": result["text"], "finishReason": "error"}
    # The server starts a new daemon; the session goes on.
    deadline = asyncio.get_running_loop().time() + 90
    while True:
        follow_up = await chat.ask("Go on", sessionId=result["sessionId"], maxTokens=SHORT)
        if follow_up["finishReason"] != "error" or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert follow_up["finishReason"] in ("stop", "length") and follow_up["messageIndex"] >= 3
