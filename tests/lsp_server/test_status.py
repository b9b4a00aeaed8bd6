"""`fimble/status` through the real `fimble lsp` and the session's daemon: the model loads and the
workspace is indexed with the state sent at each change; the daemon dying turns it into an error
with the reason, and the server loads the model again in a new daemon without waiting for a
keystroke."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.lsp_server.conftest import start_client
from tests.lsp_server.test_daemon_restart import daemon_pid


class StatusLog:
    """The fimble/status notifications a client received, in order."""

    def __init__(self, client):
        self.client = client
        self.sent: list[dict] = []

        @client.feature("fimble/status")
        def received(params) -> None:
            self.sent.append(dict(params._asdict()) if hasattr(params, "_asdict") else dict(params))

    async def wait_for(self, predicate, since: int = 0, timeout_s: float = 60.0) -> dict:
        """The first status from the `since`-th on for which `predicate` holds."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not any(predicate(s) for s in self.sent[since:]):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no such status within {timeout_s:.0f} s; received {self.sent}")
            await asyncio.sleep(0.02)
        return next(s for s in self.sent[since:] if predicate(s))


@pytest.fixture
async def status(fimble_env, tmp_path):
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "a.py").write_text("def a():\n    return 1\n")
    client = await start_client(fimble_env, root=workspace)
    log = StatusLog(client)
    yield log
    await client.shutdown_session()
    await client.stop()


async def test_the_status_goes_from_loading_to_ready_with_the_workspace_indexed(status):
    ready = await status.wait_for(lambda s: s["state"] == "ready" and s["index"] == "ready")
    assert ready == {"state": "ready", "model": "ready", "index": "ready", "problem": ""}
    states = [s["state"] for s in status.sent]
    assert states[0] == "loading" and states[-1] == "ready"
    assert all(a != b for a, b in zip(status.sent, status.sent[1:])), "a status is sent only when it changes"


async def test_a_dead_daemon_is_an_error_until_a_new_one_has_loaded_the_model(status, in_fimble_env):
    await status.wait_for(lambda s: s["state"] == "ready" and s["index"] == "ready")
    before = len(status.sent)
    old_pid = await daemon_pid()
    os.kill(old_pid, signal.SIGKILL)

    error = await status.wait_for(lambda s: s["state"] == "error", since=before, timeout_s=10)
    assert "daemon stopped" in error["problem"] and error["model"] == "error"
    assert any("daemon stopped" in m.message for m in status.client.messages), "the user is told too"
    # No request needed: the server starts a new daemon and loads the model by itself.
    await status.wait_for(lambda s: s["state"] == "ready", since=status.sent.index(error))
    assert await daemon_pid() != old_pid
