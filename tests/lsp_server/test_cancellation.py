"""Cancellation through the LSP: $/cancelRequest, and a newer request superseding an older one on
the same document. Either way the daemon's engine stops the request (its status counts it as
cancelled and nothing is left running). multi_line is served by the never-stopping model."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from tests.lsp_server.conftest import EMPTY_BODY, inline_at, multi_line_request, multi_line_status, open_document, wait_until

async def test_cancel_request_stops_the_generation(long_lsp, daemon):
    before = await multi_line_status(daemon)  # the model loads on the first request
    open_document(long_lsp, "file:///work/cancel.py", EMPTY_BODY)
    request = multi_line_request("file:///work/cancel.py")
    pending = asyncio.ensure_future(long_lsp.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, request, msg_id="slow-1"))
    await wait_until(lambda s: s["running"] == 1, daemon)
    long_lsp.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
    with pytest.raises(JsonRpcRequestCancelled):
        await pending
    # The engine stops the request; the daemon then counts it as cancelled in its stats.
    after = await wait_until(lambda s: s["running"] == 0 and s["cancelled"] > before["cancelled"], daemon, timeout_s=10)
    assert after["cancelled"] == before["cancelled"] + 1


async def test_a_newer_request_supersedes_the_older_one(long_lsp, daemon):
    before = await multi_line_status(daemon)
    uri = "file:///work/supersede.py"
    open_document(long_lsp, uri, EMPTY_BODY + "x = compute([1, 2])\n")
    older = asyncio.ensure_future(long_lsp.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, multi_line_request(uri)))
    await wait_until(lambda s: s["running"] == 1, daemon)
    newer = await inline_at(long_lsp, uri, 2, 19)
    assert newer is not None
    with pytest.raises(JsonRpcRequestCancelled):
        await older
    # The engine stops the request; the daemon then counts it as cancelled in its stats.
    after = await wait_until(lambda s: s["running"] == 0 and s["cancelled"] > before["cancelled"], daemon, timeout_s=10)
    assert after["cancelled"] == before["cancelled"] + 1
