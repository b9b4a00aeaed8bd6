"""The standby daemon: a second `fimble daemon run --standby` that has already imported torch and
transformers, and loaded the single-line model, waiting on the daemon's lifetime lock to take over
the moment the daemon dies.

    daemon, once serving ── spawn_daemon(standby=True) ──> the standby:
        takes standby.lock (one standby at a time) and writes its pid and state in it
        imports torch, transformers and the engine, at idle CPU priority      state "importing"
        loads the single-line role's model from the int8 cache, at idle priority  state "loading"
        blocks on daemon.lock ... the daemon dies and the kernel releases its lock    state "ready"
        listens on the socket, serves, and starts a standby of its own

Why: importing torch and transformers takes 6-7 s here (6.2 s of a new daemon's 6.4-7.3 s
before it could load even the tests' tiny model), and loading the embedded model from its int8
cache 1.7-2.7 s more, and every editor waits through both after a crash. The standby has done
them already. The imports hold ~330 MB RSS; the model is the int8 cache's memory map, whose pages
the serving daemon has in the page cache already, plus its own copy of the int8 weights (which
the kernel needs aligned; see README, Reliability and security, for the measured cost). Once done
it takes no CPU, and all of it runs at SCHED_IDLE, so it never slows the serving daemon. Only a
model that loads from the int8 cache alone is preloaded (CPU, int8 weight-only, a local or the
embedded checkpoint): a GPU model would take a second copy of GPU memory, and the standby never
converts or quantizes what the serving daemon may be converting at the same time. A config
changed meanwhile is read again at the takeover, and a preloaded model no role names any more is
let go. A daemon that exits on purpose (idle, `fimble daemon stop`, a protocol upgrade) stops its
standby first, so that one does not take over.
`FIMBLE_DAEMON_STANDBY=0` turns it off.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

log = logging.getLogger(__name__)

STANDBY_LOCK = "standby.lock"
DAEMON_LOCK = "daemon.lock"


def standby_enabled() -> bool:
    return os.environ.get("FIMBLE_DAEMON_STANDBY", "1") != "0"


@dataclass
class Takeover:
    """The locks a standby holds once the daemon is gone: the daemon's lifetime lock, kept for
    the new daemon's life, and its own, let go once the new daemon listens (a client that finds
    neither a standby nor a socket starts a daemon of its own)."""

    lifetime_lock: IO
    standby_lock: IO
    preloaded: dict = field(default_factory=dict)  # ModelSpec -> LoadedModel, for EnginePool

    def listening(self) -> None:
        self.standby_lock.close()

    def hand_over_models(self) -> dict:
        """The preloaded models, given up: the new daemon's pool keeps those it uses, and the rest
        are freed with it."""
        models, self.preloaded = self.preloaded, {}
        return models


def wait_to_take_over(runtime_dir: Path) -> Takeover | None:
    """Run as the standby: import what a daemon needs, then wait for the daemon's lifetime lock.
    Returns once the daemon is gone; None when another standby is already waiting, or when the
    runtime dir went with the daemon."""
    standby_lock = _try_lock(runtime_dir / STANDBY_LOCK)
    if standby_lock is None:
        log.info("a standby is already waiting; exiting")
        return None
    _write_state(standby_lock, "importing")
    started = time.monotonic()
    preloaded = _prepare_at_idle_priority(lambda: _write_state(standby_lock, "loading"))
    _write_state(standby_lock, "ready")
    log.info(
        "standby ready in %.1f s (pid %d, %s); waiting for the daemon's lock",
        time.monotonic() - started,
        os.getpid(),
        f"{len(preloaded)} model(s) preloaded" if preloaded else "no model preloaded",
    )
    daemon_lock = open(runtime_dir / DAEMON_LOCK, "a+")
    fcntl.flock(daemon_lock, fcntl.LOCK_EX)  # blocks until the daemon exits, however it exits
    if os.fstat(daemon_lock.fileno()).st_nlink == 0:
        # The runtime dir was removed (the user logged out, a test ended): no editor can reach a
        # daemon started here, so end the line of standbys.
        log.info("the runtime dir %s is gone; exiting", runtime_dir)
        return None
    log.info("the daemon is gone: taking over")
    return Takeover(daemon_lock, standby_lock, preloaded)


def stop_standby(runtime_dir: Path, timeout_s: float = 10.0) -> None:
    """Called by a daemon that exits on purpose, before it lets go of its lifetime lock: ends the
    waiting standby (its pid is in the standby lock) and waits until that lock is free, so that no
    standby is left to take over."""
    path = runtime_dir / STANDBY_LOCK
    if not runtime_dir.is_dir():
        return  # removed: a standby finds its lock file unlinked and exits (wait_to_take_over)
    deadline = time.monotonic() + timeout_s
    while (lock := _try_lock(path)) is None and time.monotonic() < deadline:
        pid = _standby_pid(path)
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    if lock is None:
        log.warning("the standby daemon did not stop within %.0f s", timeout_s)
    else:
        lock.close()


def standby_waiting(runtime_dir: Path) -> bool:
    """Whether a standby holds its lock: about to take over, or waiting to."""
    if not runtime_dir.is_dir():
        return False
    lock = _try_lock(runtime_dir / STANDBY_LOCK)
    if lock is None:
        return True
    lock.close()
    return False


def standby_state(runtime_dir: Path) -> dict | None:
    """The waiting standby's pid and state ("importing", "loading", then "ready"), for `fimble
    daemon status`."""
    if not standby_waiting(runtime_dir):
        return None
    path = runtime_dir / STANDBY_LOCK
    pid = _standby_pid(path)
    # A standby that has just taken the lock has not yet written over the pid before it (which may
    # be this daemon's own, if it was a standby itself).
    return {"pid": pid, "state": _read_lock_file(path)[1]} if pid and pid != os.getpid() else None


def _prepare_at_idle_priority(on_imported: Callable[[], None]) -> dict:
    """The imports, then the preload, in a thread of the lowest CPU priority: they take only
    cycles nothing else wants (the OpenMP workers a torch op starts there inherit the priority).
    Threads the process starts later keep the main thread's normal priority."""
    preloaded: dict = {}

    def prepare() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):  # not Linux: the imports run at normal priority
            pass
        import fimble.models.pool  # noqa: F401  (torch, transformers and the engine)

        on_imported()
        preloaded.update(_preload_single_line_model())

    thread = threading.Thread(target=prepare, name="fimble-standby-prepare")
    thread.start()
    thread.join()
    return preloaded


def _preload_single_line_model() -> dict:
    """The single-line role's model (every editor window asks for it first), when it loads from the
    int8 cache alone; nothing otherwise. A failure only costs the takeover the load: the daemon
    that takes over loads, and reports, as any daemon does."""
    from fimble.models.config import load_role_config
    from fimble.models.loading import load_if_kept_quantized
    from fimble.models.spec import Role

    try:
        spec = load_role_config().spec_for(Role.SINGLE_LINE)
        loaded = load_if_kept_quantized(spec)
    except Exception as error:  # a bad config or checkpoint: the serving daemon reports it
        log.info("standby: no model preloaded (%s)", error)
        return {}
    return {spec: loaded} if loaded is not None else {}


def _try_lock(path: Path) -> IO | None:
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _write_state(lock: IO, state: str) -> None:
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()} {state}\n")
    lock.flush()


def _read_lock_file(path: Path) -> tuple[int, str]:
    try:
        pid, state = path.read_text().split()
        return int(pid), state
    except (OSError, ValueError):
        return 0, ""


def _standby_pid(path: Path) -> int | None:
    """The pid the standby wrote, if that process is still a standby (a pid is reused once its
    process is gone, and no other process may get the signal)."""
    pid = _read_lock_file(path)[0]
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if pid and b"--standby" in command else None
