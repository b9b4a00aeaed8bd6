"""`fimble daemon`: one process per user that holds the engines, shared by every editor window.

    unix socket (0600, in the user's runtime dir) -> Daemon._serve_connection -> Daemon._dispatch
        -> wire.parse_request -> op handlers (_hello, _model, _generate, _cancel, _status, _shutdown)
        -> Engine.submit(GenerationRequest) -> GenerationChunk frames, then the GenerationResult

The event loop thread only moves frames. A role's model loads in one loader thread when the
first request for that role arrives, and each running request has a small thread that waits on the
engine's stream. None of these threads runs torch ops: every thread that does gets its own OpenMP
pool, and a second pool slowed decode by ~40% on 2 vCPUs (see models/pool.start_engine).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import statistics
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fimble.models import standby, wire
from fimble.models.backend import model_info
from fimble.models.conversion import unstructure
from fimble.models.daemon_client import spawn_daemon
from fimble.models.generation import GenerationChunk
from fimble.models.spec import Role, RoleConfig

log = logging.getLogger(__name__)


class DaemonAlreadyRunningError(RuntimeError):
    """Another daemon of this user holds the lock; use it (or `fimble daemon stop` it first)."""


@dataclass(frozen=True)
class DaemonConfig:
    # With no client connected for this long, the daemon exits and frees the model's memory.
    idle_exit_s: float = float(os.environ.get("FIMBLE_DAEMON_IDLE_S", 300))
    # A standby daemon with torch imported takes over within a second of a crash (models/standby.py).
    standby: bool = field(default_factory=standby.standby_enabled)


@dataclass
class RoleStats:
    """Rolling latency figures of one role (the last 500 requests) for `fimble daemon status`."""

    ttft_s: deque = field(default_factory=lambda: deque(maxlen=500))
    total_s: deque = field(default_factory=lambda: deque(maxlen=500))
    requests: int = 0
    cancelled: int = 0
    errors: int = 0

    def record(self, result) -> None:
        self.requests += 1
        self.cancelled += result.finish_reason == "cancelled"
        self.errors += result.finish_reason == "error"
        if result.finish_reason not in ("cancelled", "error"):
            self.total_s.append(result.stats.total_s)
            if result.stats.ttft_s is not None:
                self.ttft_s.append(result.stats.ttft_s)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "ttft_p50_s": _percentile(self.ttft_s, 50),
            "ttft_p95_s": _percentile(self.ttft_s, 95),
            "total_p50_s": _percentile(self.total_s, 50),
        }


def _percentile(values, q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class _Connection:
    """One client: its writer (serialised sends) and the requests it has running."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.handles: dict[int, Any] = {}  # request id -> RequestHandle
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            self.writer.write(wire.encode_frame(message))
            await self.writer.drain()


class Daemon:
    def __init__(self, roles: RoleConfig | Exception, config: DaemonConfig = DaemonConfig(), pool_factory: Callable | None = None):
        """`roles` is the parsed config, or the error that parsing it raised: the daemon still
        starts, and reports that error on every request, so the editor can show it."""
        self.roles = roles
        self.config = config
        self._pool_factory = pool_factory
        self.pool = None
        self._loads: dict[Role, asyncio.Future] = {}
        self._model_infos: dict[tuple[int, Role], asyncio.Future] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fimble-daemon-load")
        self._connections: set[_Connection] = set()
        self._stats = {role: RoleStats() for role in Role}
        self._idle_since = time.monotonic()
        self._stopping = asyncio.Event()
        self._started_at = time.time()
        self._runtime_dir: Path | None = None  # where the socket and the locks are, once serving

    # --- lifetime ---------------------------------------------------------------------------------

    async def serve(self, path: Path | None = None, takeover: standby.Takeover | None = None) -> None:
        """Serve until `shutdown` or the idle timeout. Raises DaemonAlreadyRunningError. A standby
        taking over already holds the lifetime lock."""
        path = path or wire.socket_path()
        self._runtime_dir = path.parent
        lock = takeover.lifetime_lock if takeover else _take_lifetime_lock(path.parent / standby.DAEMON_LOCK)
        try:
            server = await _listen_private(path, self._serve_connection)
            log.info("listening on %s (pid %d)", path, os.getpid())
            if takeover:
                takeover.listening()
            self._create_pool(takeover.hand_over_models() if takeover else {})
            if self.config.standby:
                spawn_daemon(standby=True)
            idle = asyncio.create_task(self._exit_when_idle(path))
            async with server:
                await self._stopping.wait()
            idle.cancel()
            await self._close()
            # Exiting on purpose: no standby may take over once the lifetime lock is released.
            # (A daemon that dies any other way leaves the standby to take its place.)
            await asyncio.get_running_loop().run_in_executor(None, standby.stop_standby, path.parent)
        finally:
            path.unlink(missing_ok=True)
            lock.close()

    def _create_pool(self, preloaded: dict) -> None:
        """The pool loads a role's model on the first request that needs it: a role nobody asks
        for costs no memory, and roles with equal specs share one load. `fimble lsp` asks for the
        single-line model as soon as an editor window opens. `preloaded`: the models a standby
        loaded before it took over."""
        if isinstance(self.roles, Exception):
            return
        from fimble.models.pool import EnginePool  # torch: imported after the socket is up

        self.pool = self._pool_factory(self.roles) if self._pool_factory else EnginePool(self.roles, preloaded=preloaded)
        for role in self.pool.preloaded_roles() if preloaded else ():
            # Its engine starts now, not at the first request: the model is there. A failure is
            # raised to the first request for the role, which then loads again (_engine).
            self._load(role).add_done_callback(lambda load: load.cancelled() or load.exception())

    def _load(self, role: Role) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        self._loads[role] = loop.run_in_executor(self._loader, self.pool.engine_for, role)
        return self._loads[role]

    async def _engine(self, role: Role):
        if isinstance(self.roles, Exception):
            raise self.roles
        future = self._loads.get(role) or self._load(role)
        try:
            return await asyncio.shield(future)
        except Exception:
            # A failed load is retried by the next request (the user may have fixed the config).
            if self._loads.get(role) is future:
                del self._loads[role]
            raise

    async def _exit_when_idle(self, path: Path) -> None:
        """Exit after the idle timeout, or once the socket is gone (its runtime dir removed), as no
        client can reach this daemon then."""
        listening = path.stat().st_ino
        while True:
            await asyncio.sleep(min(5.0, self.config.idle_exit_s / 4))
            if not _same_file(path, listening):
                log.info("the socket %s is gone; exiting", path)
                self._stopping.set()
                return
            idle_for = time.monotonic() - self._idle_since
            if not self._connections and idle_for >= self.config.idle_exit_s:
                log.info("no client for %.0f s; exiting", idle_for)
                self._stopping.set()
                return

    async def _close(self) -> None:
        for connection in list(self._connections):
            for handle in list(connection.handles.values()):
                handle.cancel()
            connection.writer.close()
        if self.pool is not None:
            await asyncio.get_running_loop().run_in_executor(self._loader, self.pool.close)
        self._loader.shutdown(wait=False, cancel_futures=True)

    # --- connections ------------------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        self._connections.add(connection)
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    message = await wire.read_frame(reader)
                except wire.FrameTooLargeError as error:
                    await connection.send({"id": None, "done": True, "error": str(error)})
                    return
                except wire.ProtocolError as error:
                    await connection.send({"id": None, "done": True, "error": str(error)})
                    continue
                task = asyncio.create_task(self._dispatch(connection, message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            # A closed editor window stops its requests rather than leaving them to use the cores.
            for handle in list(connection.handles.values()):
                handle.cancel()
            self._connections.discard(connection)
            if not self._connections:
                self._idle_since = time.monotonic()
            writer.close()

    async def _dispatch(self, connection: _Connection, message: dict[str, Any]) -> None:
        request_id = wire.usable_id(message.get("id"))
        try:
            request_id, request = wire.parse_request(message)
            await self._handlers[type(request)](connection, request_id, request)
        except ConnectionError:
            return  # the client left mid-request; its requests were cancelled with the connection
        except Exception as error:  # every failure becomes an error reply; the daemon lives on
            if not isinstance(error, (wire.ProtocolError, ValueError)):
                log.exception("request %s failed", request_id)
            try:
                await connection.send({"id": request_id, "done": True, "error": _describe(error)})
            except ConnectionError:
                pass

    # --- ops --------------------------------------------------------------------------------------

    @property
    def _handlers(self) -> dict[type, Callable]:
        return {
            wire.Hello: self._hello,
            wire.ModelQuery: self._model,
            wire.Generate: self._generate,
            wire.Cancel: self._cancel,
            wire.Status: self._status,
            wire.Shutdown: self._shutdown,
        }

    async def _hello(self, connection: _Connection, request_id: int, request: wire.Hello) -> None:
        await connection.send(wire.reply_frame(request_id, wire.HelloReply(wire.PROTOCOL_VERSION, os.getpid())))

    async def _model(self, connection: _Connection, request_id: int, request: wire.ModelQuery) -> None:
        """Wait for the role's model; answer with its tokenizer, so the client builds prompts itself."""
        engine = await self._engine(request.role)
        info = await asyncio.shield(self._model_info(engine, request.role))
        await connection.send(wire.reply_frame(request_id, info))

    def _model_info(self, engine, role: Role) -> asyncio.Future:
        """Made once per engine and role, in a worker thread: serialising the tokenizer takes
        ~0.15 s (the embedded model's), which on the event loop would hold up every frame."""
        key = (id(engine), role)
        made = self._model_infos.get(key)
        if made is None or (made.done() and made.exception() is not None):
            self._model_infos[key] = asyncio.get_running_loop().run_in_executor(None, model_info, engine.loaded, role)
        return self._model_infos[key]

    async def _generate(self, connection: _Connection, request_id: int, request: wire.Generate) -> None:
        generation = request.request
        engine = await self._engine(generation.role)
        handle = engine.submit(generation)
        connection.handles[request_id] = handle
        try:
            async for delta in _stream(handle):
                await connection.send({"id": request_id, "chunk": unstructure(GenerationChunk(delta))})
            result = handle.result()
        finally:
            connection.handles.pop(request_id, None)
            if not handle.done:  # the client went away mid-stream: stop using the cores for it
                handle.cancel()
        self._stats[generation.role].record(result)
        await connection.send({"id": request_id, "done": True, "result": unstructure(result)})

    async def _cancel(self, connection: _Connection, request_id: int, request: wire.Cancel) -> None:
        handle = connection.handles.get(request.target)
        if handle is not None:
            handle.cancel()
        await connection.send(wire.reply_frame(request_id, wire.CancelReply(handle is not None)))

    async def _status(self, connection: _Connection, request_id: int, request: wire.Status) -> None:
        await connection.send(wire.reply_frame(request_id, wire.StatusReply(self.status())))

    async def _shutdown(self, connection: _Connection, request_id: int, request: wire.Shutdown) -> None:
        await connection.send(wire.reply_frame(request_id, wire.Done()))
        self._stopping.set()

    def status(self) -> dict[str, Any]:
        roles = {}
        for role in Role:
            future = self._loads.get(role)
            # A role not asked for yet may share an engine another role has loaded.
            shared = self._loaded_engine_of(role) if future is None else None
            if future is None:
                state = "ready" if shared is not None else "not loaded"
            else:
                state = "loading" if not future.done() else "failed" if future.exception() else "ready"
            entry: dict[str, Any] = {"state": state, **self._stats[role].summary()}
            if isinstance(self.roles, RoleConfig):
                entry["spec"] = dataclasses.asdict(self.roles.spec_for(role))
            if state == "failed":
                entry["error"] = _describe(future.exception())
            if state == "ready":
                engine = shared or future.result()
                entry.update(model=engine.loaded.name, quantization=engine.loaded.quantization, device=str(engine.loaded.device))
                entry["cache"] = engine.cache_usage()
                entry["running"] = engine.active_requests
                entry["request_maps"] = engine.request_maps()
            roles[role.config_name] = entry
        return {
            "pid": os.getpid(),
            "version": wire.PROTOCOL_VERSION,
            "uptime_s": round(time.time() - self._started_at, 1),
            "clients": len(self._connections),
            "connection_handles": sum(len(connection.handles) for connection in self._connections),
            "idle_exit_s": self.config.idle_exit_s,
            "standby": standby.standby_state(self._runtime_dir) if self._runtime_dir else None,
            "config_error": _describe(self.roles) if isinstance(self.roles, Exception) else None,
            "roles": roles,
        }

    def _loaded_engine_of(self, role: Role):
        if self.pool is None or not isinstance(self.roles, RoleConfig):
            return None
        return self.pool.loaded().get(self.roles.spec_for(role))


# --- helpers of this module ---------------------------------------------------------------------


async def _stream(handle):
    """The engine's text deltas as an async iterator. A thread waits on the blocking stream (it runs
    no torch ops) and hands each delta to the event loop."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        for delta in handle.stream():
            loop.call_soon_threadsafe(deltas.put_nowait, delta)
        loop.call_soon_threadsafe(deltas.put_nowait, None)

    threading.Thread(target=pump, name=f"fimble-stream-{handle.request_id}", daemon=True).start()
    while (delta := await deltas.get()) is not None:
        yield delta


def _same_file(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _take_lifetime_lock(path: Path):
    """Held for the daemon's whole life: a second daemon of the same user fails here, not later."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DaemonAlreadyRunningError(f"another Fimble daemon is running (lock {path})") from None
    return handle


async def _listen_private(path: Path, handler) -> asyncio.AbstractServer:
    """A unix socket only this user can open. We hold the lifetime lock, so a socket file left at
    `path` belongs to a daemon that died: remove it. The umask makes the socket 0600 from birth;
    the chmod is belt and braces for systems that ignore umask on sockets."""
    path.unlink(missing_ok=True)
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handler, path=str(path), limit=wire.MAX_FRAME_BYTES)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


def run_daemon(config: DaemonConfig = DaemonConfig(), as_standby: bool = False) -> None:
    """`fimble daemon run`: serve in the foreground until shutdown or idle. `as_standby`
    (`--standby`) first waits for the running daemon to go, and reads the config only then."""
    from fimble.models.config import ConfigError, load_role_config

    takeover = None
    if as_standby:
        takeover = standby.wait_to_take_over(wire.socket_path().parent)
        if takeover is None:
            return
    try:
        roles: RoleConfig | Exception = load_role_config()
    except ConfigError as error:
        log.error("%s", error)
        roles = error
    asyncio.run(Daemon(roles, config).serve(takeover=takeover))
