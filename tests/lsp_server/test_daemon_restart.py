"""The daemon dying mid-request: the request ends at once with a message in the editor, and the
server starts a new daemon that serves the next request."""

from __future__ import annotations

import asyncio
import os
import signal

from lsprotocol import types

from fimble.models.daemon_client import DaemonClient
from tests.lsp_server.conftest import EMPTY_BODY, inline_at, multi_line_request, open_document, wait_until


async def daemon_pid() -> int:
    client = DaemonClient(autostart=False)
    try:
        return (await client.status())["pid"]
    finally:
        await client.close()


async def test_the_daemon_dies_mid_request_and_is_restarted(long_lsp, daemon):
    uri = "file:///work/dies.py"
    open_document(long_lsp, uri, EMPTY_BODY + "total = 1 + \n")
    pending = asyncio.ensure_future(long_lsp.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, multi_line_request(uri)))
    await wait_until(lambda s: s["running"] == 1, daemon)
    old_pid = await daemon_pid()
    os.kill(old_pid, signal.SIGKILL)

    answer = await asyncio.wait_for(pending, timeout=10)
    assert list(answer.items) == []
    assert any("daemon stopped" in m.message for m in long_lsp.messages), [m.message for m in long_lsp.messages]

    # The server restarts the daemon by itself; the next request is served by the new one.
    deadline = asyncio.get_running_loop().time() + 60
    answer = None
    while asyncio.get_running_loop().time() < deadline and not (answer and answer.items):
        answer = await inline_at(long_lsp, uri, 2, 12, invoked=True)
    assert answer is not None and answer.items
    assert await daemon_pid() != old_pid
