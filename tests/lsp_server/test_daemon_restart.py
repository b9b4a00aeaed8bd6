"""The daemon dying mid-request: the request ends at once with a message in the editor, and the
server starts a new daemon that serves the next request."""

from __future__ import annotations

import asyncio
import os
import signal

from lsprotocol import types

from models.daemon_client import DaemonClient
from tests.lsp_server.conftest import QUIET, open_document, start_client
from tests.lsp_server.test_cancellation import EMPTY_BODY, LONG, multi_line_request, wait_until


async def daemon_pid() -> int:
    client = DaemonClient(autostart=False)
    try:
        return (await client.call("status"))["status"]["pid"]
    finally:
        await client.close()


async def test_the_daemon_dies_mid_request_and_is_restarted(fimble_env, in_fimble_env):
    lsp = await start_client(fimble_env, initialization_options=LONG)
    watcher = DaemonClient()
    try:
        await watcher.connect()
        await wait_until(lambda s: True, watcher)
        uri = "file:///work/dies.py"
        open_document(lsp, uri, EMPTY_BODY + "total = 1 + \n")
        pending = asyncio.ensure_future(lsp.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, multi_line_request(uri)))
        await wait_until(lambda s: s["running"] == 1, watcher)
        old_pid = await daemon_pid()
        os.kill(old_pid, signal.SIGKILL)

        answer = await asyncio.wait_for(pending, timeout=10)
        assert list(answer.items) == []
        assert any("daemon stopped" in m.message for m in lsp.messages), [m.message for m in lsp.messages]

        # The server restarts the daemon by itself; the next request is served by the new one.
        deadline = asyncio.get_running_loop().time() + 60
        answer = None
        while asyncio.get_running_loop().time() < deadline and not (answer and answer.items):
            answer = await lsp.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    position=types.Position(2, 12),
                    context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
                )
            )
        assert answer is not None and answer.items
        new_pid = await daemon_pid()
        assert new_pid != old_pid
    finally:
        await watcher.close()
        await lsp.shutdown_session()
        await lsp.stop()
