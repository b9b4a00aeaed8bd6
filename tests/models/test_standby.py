"""The standby daemon (models/standby.py): killed, the daemon is replaced by its standby, which
already imported torch (and loaded the single-line model, when the int8 cache holds it), and
which starts a standby of its own; stopped on purpose, the daemon takes its standby with it. Only
one standby waits at a time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fimble.models import wire
from fimble.models.daemon_client import DaemonClient, wait_exited
from fimble.models.generation import GenerationRequest, ModelInfo
from fimble.models.loading import load_model
from fimble.models.spec import ModelSpec
from fimble.models.spec import Role
from fimble.models.standby import standby_waiting
from tests.conftest import write_tiny_config


@pytest.fixture
def runtime(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FIMBLE_CONFIG", str(write_tiny_config(tmp_path / "config.toml", tiny_checkpoint)))
    monkeypatch.setenv("FIMBLE_DAEMON_STANDBY", "1")
    monkeypatch.setenv("FIMBLE_DAEMON_IDLE_S", "30")
    with tempfile.TemporaryDirectory(prefix="fimble-s-") as runtime:
        monkeypatch.setenv("FIMBLE_RUNTIME_DIR", runtime)
        yield runtime
        subprocess.run([sys.executable, "-m", "fimble", "daemon", "stop"], capture_output=True, timeout=60)
        assert not standby_waiting(Path(runtime)), "a standby outlived the stopped daemon"


async def ready_standby(client: DaemonClient, timeout_s: float = 90) -> int:
    """The pid of the daemon's standby, once it has imported torch."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        standby = (await client.status())["standby"]
        if standby and standby["state"] == "ready":
            return standby["pid"]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no standby was ready within {timeout_s} s")


async def test_one_standby_waits_and_replaces_a_killed_daemon_then_serves_and_gets_a_standby_of_its_own(runtime):
    client = DaemonClient()
    await client.connect()
    killed = client.daemon_pid
    standby = await ready_standby(client)
    assert standby != killed
    second = subprocess.run([sys.executable, "-m", "fimble", "daemon", "run", "--standby"], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "a standby is already waiting" in second.stderr
    assert (await client.status())["standby"]["pid"] == standby

    os.kill(killed, signal.SIGKILL)
    await asyncio.sleep(0.01)
    client = DaemonClient()
    await client.connect()
    assert client.daemon_pid == standby, "a new daemon was started instead of the standby taking over"
    await client.call(wire.ModelQuery(Role.SINGLE_LINE), ModelInfo)
    result = await client.generate(GenerationRequest(role=Role.SINGLE_LINE, prompt_ids=(5, 6, 7, 8), max_new_tokens=4))
    assert result.finish_reason in ("length", "stop") and len(result.token_ids) > 0
    next_standby = await ready_standby(client)
    assert next_standby not in (killed, standby)
    await client.close()


async def test_a_daemon_stopped_on_purpose_takes_its_standby_with_it(runtime):
    client = DaemonClient()
    await client.connect()
    daemon, standby = client.daemon_pid, await ready_standby(client)
    await client.call(wire.Shutdown(), wire.Done)
    await client.close()
    deadline = time.monotonic() + 30
    assert await asyncio.to_thread(wait_exited, standby, 30), "the standby outlived a daemon that was stopped"
    assert await asyncio.to_thread(wait_exited, daemon, deadline - time.monotonic())
    assert not wire.socket_path().exists(), "the standby took over after a stop"


async def role_state(client: DaemonClient, role: str) -> str:
    return (await client.status())["roles"][role]["state"]


async def test_a_standby_preloads_the_single_line_model_and_the_daemon_it_becomes_starts_it_unasked(tiny_checkpoint, tmp_path, monkeypatch, runtime):
    # single_line on the CPU default (int8 weight-only), kept quantized in the cache; the other
    # roles unquantized, which the cache can't hold, so the standby does not preload them.
    config = tmp_path / "config.toml"
    config.write_text(
        f'[models.single_line]\nsource = "{tiny_checkpoint}"\ndevice = "cpu"\ncontext_length = 2048\nthreads = 1\n\n'
        + "".join(f'[models.{role}]\nsource = "{tiny_checkpoint}"\nquantization = "none"\ndevice = "cpu"\nthreads = 1\n\n' for role in ("multi_line", "chat"))
    )
    monkeypatch.setenv("FIMBLE_CONFIG", str(config))
    load_model(ModelSpec(source=str(tiny_checkpoint), device="cpu", context_length=2048, threads=1))  # fills the int8 cache
    request = GenerationRequest(role=Role.SINGLE_LINE, prompt_ids=(5, 6, 7, 8, 9, 10), max_new_tokens=8)

    client = DaemonClient()
    await client.connect()
    killed = client.daemon_pid
    before = await client.generate(request)
    standby = await ready_standby(client)
    await client.close()

    os.kill(killed, signal.SIGKILL)
    await asyncio.sleep(0.01)
    client = DaemonClient()
    await client.connect()
    assert client.daemon_pid == standby
    # Nothing has asked the new daemon for a model: a daemon that loads on demand would say
    # "not loaded" (as it does for the roles the standby did not preload).
    deadline = time.monotonic() + 30
    while await role_state(client, "single_line") != "ready":
        assert time.monotonic() < deadline, "the preloaded model's engine did not start"
        await asyncio.sleep(0.05)
    assert await role_state(client, "multi_line") == "not loaded"
    after = await client.generate(request)
    assert after.token_ids == before.token_ids
    await client.close()
