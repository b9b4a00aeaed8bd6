"""The workspace watcher: bursts held until quiet (on explicit times), and on a real directory every
change and deletion arrives."""

from __future__ import annotations

import threading
from pathlib import Path

from fimble.context.watch import ChangeBatch, PendingChanges, WorkspaceWatcher
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



def test_a_burst_is_held_until_it_has_been_quiet():
    # A git checkout: 50 files within half a second, then nothing.
    pending = PendingChanges()
    paths = [Path(f"/ws/module_{i}.py") for i in range(50)]
    for i, path in enumerate(paths):
        now = 100.0 + i * 0.01
        pending.add(path, deleted=False, now=now)
        assert not pending.due(now, quiet_s=0.3, max_wait_s=5.0)
    assert not pending.due(now + 0.29, quiet_s=0.3, max_wait_s=5.0)
    assert pending.due(now + 0.31, quiet_s=0.3, max_wait_s=5.0)
    batch = pending.take()
    assert batch.changed == set(paths) and batch.deleted == frozenset()
    assert not pending.due(now + 10, quiet_s=0.3, max_wait_s=5.0)  # nothing left to hand over


def test_a_long_burst_is_handed_over_every_max_wait():
    pending = PendingChanges()
    for i in range(11):  # an event every 0.1 s for a second: never quiet for 0.3 s
        pending.add(Path(f"/ws/f{i}.py"), deleted=False, now=100.0 + i * 0.1)
    assert pending.due(101.0, quiet_s=0.3, max_wait_s=1.0)
    assert not pending.due(100.99, quiet_s=0.3, max_wait_s=1.0)


def test_the_latest_event_of_a_path_wins():
    pending = PendingChanges()
    path = Path("/ws/a.py")
    pending.add(path, deleted=True, now=1.0)
    pending.add(path, deleted=False, now=1.1)
    assert pending.take() == ChangeBatch(frozenset({path}), frozenset())


def test_every_file_of_a_burst_on_disk_arrives(tmp_path):
    watcher, batches, _ = collect(tmp_path, quiet_s=0.3)
    try:
        paths = [tmp_path / f"module_{i}.py" for i in range(50)]
        for path in paths:
            path.write_text(f"VALUE = {path.stem!r}\n")
        assert wait_for(lambda: set(paths) <= {p for b in batches for p in b.changed})
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

    failed = threading.Event()

    def flaky(batch: ChangeBatch) -> None:
        calls.append(batch)
        if len(calls) == 1:
            failed.set()
            raise RuntimeError("index busy")

    watcher = WorkspaceWatcher(tmp_path, flaky, quiet_s=0.05)
    watcher.start()
    try:
        (tmp_path / "one.py").write_text("x = 1\n")
        assert failed.wait(10)
        # Written after the failing batch was taken, so it can only come in a later one.
        (tmp_path / "two.py").write_text("y = 2\n")
        assert wait_for(lambda: any(tmp_path / "two.py" in b.changed for b in calls))
    finally:
        watcher.stop()
