"""The client side of the daemon socket, used by `fimble lsp` and `fimble daemon stop|status`.

One connection per process, multiplexed by request id. A reader task routes replies to the
waiting calls. The first call starts the daemon when it is absent: a lock file keeps two editor
windows from starting two. When the daemon dies, calls in flight fail with DaemonUnavailableError
at once, and the next call starts a new daemon.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from fimble import dirs
from fimble.models import wire
from fimble.models.generation import BackendError, BackendUnavailableError, GenerationChunk, GenerationRequest, GenerationResult
from fimble.models.standby import standby_waiting

T = TypeVar("T")

log = logging.getLogger(__name__)


class DaemonUnavailableError(BackendUnavailableError):
    """The daemon is not running and could not be started, or died; the message says what to do."""


class DaemonRequestError(BackendError):
    """The daemon answered a request with an error (a bad config, a model that failed to load...)."""


def daemon_log_path() -> Path:
    return dirs.runtime_dir() / "daemon.log"


def spawn_daemon(standby: bool = False) -> subprocess.Popen:
    """Start `fimble daemon run` (or its standby, models/standby.py) detached from this process
    (its own session, output to the log), so it outlives the editor window or daemon that started it."""
    with open(daemon_log_path(), "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "fimble", "daemon", "run", *(["--standby"] if standby else [])],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
            env=os.environ.copy(),
        )


class DaemonClient:
    def __init__(self, autostart: bool = True, start_timeout_s: float = 30.0, on_disconnect: Callable[[str], None] | None = None):
        self.autostart = autostart
        self.start_timeout_s = start_timeout_s
        self.on_disconnect = on_disconnect
        self.daemon_pid: int | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Queue] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._connecting: asyncio.Lock | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    # --- connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, starting the daemon if it is absent (and autostart is on)."""
        self._connecting = self._connecting or asyncio.Lock()
        async with self._connecting:
            if self.connected:
                return
            path = wire.socket_path()
            # A daemon killed a moment ago can still take a connection, then drop it; by the second
            # try its standby, or a new daemon, listens in its place.
            hello = await self._open_and_greet(path) or await self._open_and_greet(path)
            if hello is None:
                raise DaemonUnavailableError(f"the Fimble daemon closes every connection; see {daemon_log_path()}")
            version = hello.get("version")
            if version != wire.PROTOCOL_VERSION:
                await self._replace_old_daemon(version)
            else:
                self.daemon_pid = wire.parse_reply(hello, wire.HelloReply).pid

    async def _open_and_greet(self, path: Path) -> dict[str, Any] | None:
        """The daemon's hello on a new connection (the daemon started first if need be), or None
        when the daemon dropped the connection before answering."""
        if not await self._try_open(path):
            if not self.autostart:
                raise DaemonUnavailableError("the Fimble daemon is not running; start it with `fimble daemon start`")
            await asyncio.get_running_loop().run_in_executor(None, self._start_daemon_locked, path)
            if not await self._try_open(path):
                raise DaemonUnavailableError(f"the Fimble daemon started but does not answer; see {daemon_log_path()}")
        try:
            return await self._call_connected(wire.Hello("fimble", os.getpid()))
        except DaemonUnavailableError:
            log.info("the daemon dropped a new connection")
            return None

    async def _replace_old_daemon(self, version) -> None:
        # Checked before parsing the rest: an older daemon's hello may have other fields.
        log.warning("daemon speaks protocol %s, we speak %s: replacing it", version, wire.PROTOCOL_VERSION)
        await self._call_connected(wire.Shutdown())
        await self.close()
        await asyncio.get_running_loop().run_in_executor(None, _wait_gone, wire.socket_path(), 10.0)
        await asyncio.get_running_loop().run_in_executor(None, self._start_daemon_locked, wire.socket_path())
        if not await self._try_open(wire.socket_path()):
            raise DaemonUnavailableError(f"could not start a new Fimble daemon; see {daemon_log_path()}")
        hello = wire.parse_reply(await self._call_connected(wire.Hello("fimble", os.getpid())), wire.HelloReply)
        self.daemon_pid = hello.pid

    async def _try_open(self, path: Path) -> bool:
        self._closing = False
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=wire.MAX_FRAME_BYTES)
        except (FileNotFoundError, ConnectionRefusedError, OSError):
            return False
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_replies(reader, writer))
        return True

    def _start_daemon_locked(self, path: Path) -> None:
        """Runs in a worker thread (flock blocks). Whoever holds the lock starts the daemon; the
        others find it answering once they get the lock."""
        with open(dirs.runtime_dir() / "start.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _answers(path) or self._standby_took_over(path):
                return
            process = spawn_daemon()
            deadline = time.monotonic() + self.start_timeout_s
            while time.monotonic() < deadline:
                if _answers(path):
                    return
                if process.poll() is not None and not _answers(path):
                    raise DaemonUnavailableError(f"the Fimble daemon exited at start (code {process.returncode}); see {daemon_log_path()}:\n{_log_tail()}")
                time.sleep(0.05)
            raise DaemonUnavailableError(f"the Fimble daemon did not start within {self.start_timeout_s:.0f} s; see {daemon_log_path()}")

    def _standby_took_over(self, path: Path) -> bool:
        """A standby daemon (models/standby.py) takes over within a second of the daemon's death,
        or, if it was still importing torch, once that is done: sooner than a new daemon could."""
        deadline = time.monotonic() + self.start_timeout_s
        while standby_waiting(path.parent) and time.monotonic() < deadline:
            if _answers(path):
                return True
            time.sleep(0.02)
        return _answers(path)

    async def _read_replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason = "the Fimble daemon closed the connection"
        try:
            while True:
                message = await wire.read_frame(reader)
                queue = self._pending.get(message.get("id"))
                if queue is not None:
                    queue.put_nowait(message)
                else:
                    log.debug("reply for no pending request (a cancel acknowledgement): %s", message.get("id"))
        except (asyncio.IncompleteReadError, ConnectionError):
            reason = f"the Fimble daemon stopped (see {daemon_log_path()}); it is being restarted"
        except wire.ProtocolError as error:
            reason = f"the Fimble daemon sent a bad frame ({error}); reconnecting"
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for queue in self._pending.values():
                queue.put_nowait({"done": True, "error": reason, "unavailable": True})
            if self.on_disconnect is not None and not self._closing:
                self.on_disconnect(reason)

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            self._reader_task = None

    # --- requests ---------------------------------------------------------------------------------

    async def call(self, request: wire.Request, reply: type[T]) -> T:
        """A one-shot request and its typed reply; connects (and starts the daemon) first if needed."""
        await self.connect()
        return wire.parse_reply(await self._call_connected(request), reply)

    async def status(self) -> dict[str, Any]:
        """The daemon's status, as `fimble daemon status` shows it (models.daemon.Daemon.status)."""
        return (await self.call(wire.Status(), wire.StatusReply)).status

    async def _call_connected(self, request: wire.Request) -> dict[str, Any]:
        request_id, queue = await self._send(request)
        try:
            return _raise_for_error(await queue.get())
        finally:
            self._pending.pop(request_id, None)

    async def generate(self, request: GenerationRequest, on_chunk: Callable[[GenerationChunk], None] | None = None) -> GenerationResult:
        """Run a generation and return its result; `on_chunk` sees each piece of text as it comes.
        If the calling task is cancelled, the daemon stops the request."""
        await self.connect()
        request_id, queue = await self._send(wire.Generate(request))
        try:
            while True:
                message = _raise_for_error(await queue.get())
                if message.get("done"):
                    return wire.parse_reply(message["result"], GenerationResult)
                chunk = wire.parse_reply(message["chunk"], GenerationChunk)
                if on_chunk is not None:
                    on_chunk(chunk)
        except asyncio.CancelledError:
            self._send_cancel(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)

    def _send_cancel(self, target: int) -> None:
        if self.connected:
            self._writer.write(wire.encode_frame(wire.request_frame(next(self._ids), wire.Cancel(target))))

    async def _send(self, request: wire.Request) -> tuple[int, asyncio.Queue]:
        if not self.connected:
            raise DaemonUnavailableError("the Fimble daemon is not connected; it is being restarted")
        request_id = next(self._ids)
        queue: asyncio.Queue = asyncio.Queue()
        self._pending[request_id] = queue
        self._writer.write(wire.encode_frame(wire.request_frame(request_id, request)))
        await self._writer.drain()
        return request_id, queue


def _raise_for_error(message: dict[str, Any]) -> dict[str, Any]:
    if "error" in message:
        kind = DaemonUnavailableError if message.get("unavailable") else DaemonRequestError
        raise kind(message["error"])
    return message


def _answers(path: Path) -> bool:
    """Whether a daemon accepts connections at `path` (a leftover socket file refuses them)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def _wait_gone(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _answers(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_exited(pid: int, timeout_s: float) -> bool:
    """Whether process `pid` ended within the timeout (looked at once at least)."""
    deadline = time.monotonic() + timeout_s
    while not _exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _exited(pid: int) -> bool:
    """A zombie, not yet reaped by its parent, has exited too."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def _log_tail(lines: int = 15) -> str:
    try:
        return "\n".join(daemon_log_path().read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
