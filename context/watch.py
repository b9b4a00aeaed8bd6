"""Watching the workspace for changes on disk, with bursts coalesced.

A `git checkout` or a formatter run touches hundreds of files within a second. The watcher
collects the changed paths and hands them over once the burst has been quiet for `quiet_s`
(or at most every `max_wait_s` during a long burst), as one set, so the index updates each file
once. watchdog's observer picks the platform's native API (inotify on Linux).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangeBatch:
    """Paths changed on disk since the last batch: created or modified, and deleted."""

    changed: frozenset[Path]
    deleted: frozenset[Path]


@dataclass
class PendingChanges:
    """The paths of a burst still under way, and when its first and latest events came."""

    changed: set[Path] = field(default_factory=set)
    deleted: set[Path] = field(default_factory=set)
    first_at: float | None = None
    last_at: float = 0.0

    def add(self, path: Path, deleted: bool, now: float) -> None:
        (self.deleted if deleted else self.changed).add(path)
        (self.changed if deleted else self.deleted).discard(path)  # the latest event wins
        if self.first_at is None:
            self.first_at = now
        self.last_at = now

    def due(self, now: float, quiet_s: float, max_wait_s: float) -> bool:
        """Whether to hand the burst over: quiet for `quiet_s`, or under way for `max_wait_s`."""
        if self.first_at is None:
            return False
        return now - self.last_at >= quiet_s or now - self.first_at >= max_wait_s

    def take(self) -> ChangeBatch:
        batch = ChangeBatch(frozenset(self.changed), frozenset(self.deleted))
        self.changed.clear()
        self.deleted.clear()
        self.first_at = None
        return batch


class WorkspaceWatcher(FileSystemEventHandler):
    def __init__(self, root: Path, on_batch: Callable[[ChangeBatch], None], quiet_s: float = 0.05, max_wait_s: float = 1.0):
        self.root = root
        self.on_batch = on_batch
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self._pending = PendingChanges()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._observer = Observer()
        self._flusher = threading.Thread(target=self._flush_loop, name="fimble-watch-flush", daemon=True)

    def start(self) -> None:
        self._observer.schedule(self, str(self.root), recursive=True)
        self._observer.start()
        self._flusher.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._flusher.join(timeout=5)

    # watchdog calls this from its own thread for every event.
    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        now = time.monotonic()
        with self._lock:
            if event.event_type == "moved":
                self._pending.add(Path(event.src_path), deleted=True, now=now)
                self._pending.add(Path(event.dest_path), deleted=False, now=now)
            else:
                self._pending.add(Path(event.src_path), deleted=event.event_type == "deleted", now=now)
        self._wake.set()

    def _flush_loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stopped.is_set():
                with self._lock:
                    pending = self._pending
                    if pending.first_at is None:
                        break
                    due = pending.due(time.monotonic(), self.quiet_s, self.max_wait_s)
                    batch = pending.take() if due else None
                if batch is not None:
                    self._deliver(batch)
                    break
                time.sleep(self.quiet_s / 2)

    def _deliver(self, batch: ChangeBatch) -> None:
        try:
            self.on_batch(batch)
        except Exception:  # a failing consumer must not stop the watching
            log.exception("updating the index for %d changed files failed", len(batch.changed) + len(batch.deleted))
