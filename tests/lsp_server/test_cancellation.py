"""Cancellation through the LSP: $/cancelRequest, and a newer request superseding an older one on
the same document. Either way the daemon's engine stops the request (its status counts it as
cancelled and nothing is left running). multi_line is served by the never-stopping model."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from models.daemon_client import DaemonClient
from tests.lsp_server.conftest import QUIET, open_document, start_client

EMPTY_BODY = "def compute(values):\n    \n"
LONG = {**QUIET, "maxMultiLineTokens": 1800}


def multi_line_request(uri: str) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(1, 4),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )


async def multi_line_status(daemon: DaemonClient) -> dict:
    return (await daemon.call("status"))["status"]["roles"]["multi_line"]


async def wait_until(predicate, daemon: DaemonClient, timeout_s: float = 60.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        status = await multi_line_status(daemon)
        if status["state"] == "ready" and predicate(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"daemon status never satisfied the condition: {status}")


@pytest.fixture
async def daemon(in_fimble_env):
    client = DaemonClient()
    await client.connect()
    yield client
    await client.close()


async def test_cancel_request_stops_the_generation(fimble_env, daemon):
    lsp = await start_client(fimble_env, initialization_options=LONG)
    try:
        await wait_until(lambda s: True, daemon)  # the model is loaded
        before = await multi_line_status(daemon)
        open_document(lsp, "file:///work/cancel.py", EMPTY_BODY)
        pending = asyncio.ensure_future(lsp.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, multi_line_request("file:///work/cancel.py"), msg_id="slow-1"))
        await wait_until(lambda s: s["running"] == 1, daemon)
        lsp.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
        with pytest.raises(JsonRpcRequestCancelled):
            await pending
        after = await wait_until(lambda s: s["running"] == 0, daemon, timeout_s=10)
        assert after["cancelled"] == before["cancelled"] + 1
    finally:
        await lsp.shutdown_session()
        await lsp.stop()


async def test_a_newer_request_supersedes_the_older_one(fimble_env, daemon):
    lsp = await start_client(fimble_env, initialization_options=LONG)
    try:
        await wait_until(lambda s: True, daemon)
        before = await multi_line_status(daemon)
        uri = "file:///work/supersede.py"
        open_document(lsp, uri, EMPTY_BODY + "x = compute([1, 2])\n")
        older = asyncio.ensure_future(lsp.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, multi_line_request(uri)))
        await wait_until(lambda s: s["running"] == 1, daemon)
        newer = await lsp.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(2, 19),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
            )
        )
        assert newer is not None
        with pytest.raises(JsonRpcRequestCancelled):
            await older
        after = await wait_until(lambda s: s["running"] == 0, daemon, timeout_s=10)
        assert after["cancelled"] == before["cancelled"] + 1
    finally:
        await lsp.shutdown_session()
        await lsp.stop()
