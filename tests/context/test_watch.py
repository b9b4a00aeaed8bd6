"""The workspace watcher on a real directory: bursts arrive as few batches, deletions are told."""

from __future__ import annotations

import threading
import time

from context.watch import ChangeBatch, WorkspaceWatcher
from tests.waiting import wait_for


def collect(tmp_path, quiet_s=0.1):
    batches: list[ChangeBatch] = []
    arrived = threading.Event()

    def on_batch(batch: ChangeBatch) -> None:
        batches.append(batch)
        arrived.set()

    watcher = WorkspaceWatcher(tmp_path, on_batch, quiet_s=quiet_s, max_wait_s=5.0)
    watcher.start()
    return watcher, batches, arrived



def test_a_burst_of_writes_arrives_as_one_batch(tmp_path):
    watcher, batches, _ = collect(tmp_path, quiet_s=0.3)
    try:
        paths = [tmp_path / f"module_{i}.py" for i in range(50)]
        for path in paths:  # like a git checkout: many files within a moment
            path.write_text(f"VALUE = {path.stem!r}\n")
        assert wait_for(lambda: set(paths) <= {p for b in batches for p in b.changed})
        assert len(batches) <= 3, f"{len(batches)} batches for one burst"
    finally:
        watcher.stop()


def test_deletes_and_renames_are_reported(tmp_path):
    kept, removed = tmp_path / "kept.py", tmp_path / "removed.py"
    kept.write_text("a = 1\n")
    removed.write_text("b = 2\n")
    watcher, batches, _ = collect(tmp_path)
    try:
        removed.unlink()
        kept.rename(tmp_path / "renamed.py")
        assert wait_for(lambda: {removed, kept} <= {p for b in batches for p in b.deleted})
        assert wait_for(lambda: tmp_path / "renamed.py" in {p for b in batches for p in b.changed})
    finally:
        watcher.stop()


def test_a_failing_consumer_does_not_stop_the_watching(tmp_path):
    calls: list[ChangeBatch] = []

    def flaky(batch: ChangeBatch) -> None:
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("index busy")

    watcher = WorkspaceWatcher(tmp_path, flaky, quiet_s=0.05)
    watcher.start()
    try:
        (tmp_path / "one.py").write_text("x = 1\n")
        assert wait_for(lambda: len(calls) >= 1)
        time.sleep(0.2)
        (tmp_path / "two.py").write_text("y = 2\n")
        assert wait_for(lambda: any(tmp_path / "two.py" in b.changed for b in calls))
    finally:
        watcher.stop()
