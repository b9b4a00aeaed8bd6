"""The daemon's life: started on demand by the first client, once even when two editor windows
start at the same moment, and gone after the idle timeout once the last client has left."""

from __future__ import annotations

import asyncio
import tempfile

import pytest

from fimble.models import wire
from fimble.models.daemon_client import DaemonClient, wait_exited


@pytest.fixture
def private_runtime(tmp_path, tiny_checkpoint, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text(f'[models.single_line]\nsource = "{tiny_checkpoint}"\nquantization = "none"\ndevice = "cpu"\n')
    with tempfile.TemporaryDirectory(prefix="fimble-l-") as runtime:
        monkeypatch.setenv("FIMBLE_CONFIG", str(config))
        monkeypatch.setenv("FIMBLE_RUNTIME_DIR", runtime)
        monkeypatch.setenv("FIMBLE_DAEMON_IDLE_S", "1")
        yield runtime


async def test_two_windows_starting_together_share_one_daemon_that_exits_when_idle(private_runtime):
    windows = [DaemonClient(), DaemonClient()]
    await asyncio.gather(*(window.connect() for window in windows))
    pids = {window.daemon_pid for window in windows}
    assert len(pids) == 1
    (pid,) = pids
    assert (await windows[0].status())["clients"] == 2

    for window in windows:
        await window.close()
    # In a thread: the event loop must go on, to close the windows' connections.
    assert await asyncio.to_thread(wait_exited, pid, 30), "the daemon outlived its idle timeout"
    assert not wire.socket_path().exists()


async def test_without_autostart_a_missing_daemon_is_a_clear_error(private_runtime):
    from fimble.models.daemon_client import DaemonUnavailableError

    with pytest.raises(DaemonUnavailableError, match="fimble daemon start"):
        await DaemonClient(autostart=False).connect()
