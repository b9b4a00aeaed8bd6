"""The per-workspace msgpack store: round trip, atomic writes, and rebuilds (never crashes) when the
file is corrupt, from another schema or from another workspace."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from fimble.context import store as store_module
from fimble.context.store import SCHEMA_VERSION, FileEntry, IndexStore, StoreSaveError, is_unchanged


def entry(path: str, content: bytes = b"x = 1\n", symbols: list | None = None) -> FileEntry:
    digest = hashlib.sha256(content).hexdigest()
    return FileEntry(path, len(content), 1_700_000_000_123_456_789, digest, "python", symbols or [])


SYMBOL = {"name": "Client", "kind": "class", "start_line": 3, "end_line": 40, "signature": "class Client(Base):"}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


@pytest.fixture
def store(workspace: Path, tmp_path: Path) -> IndexStore:
    return IndexStore(workspace, cache_dir=tmp_path / "cache")


def test_round_trip_keeps_every_field(store: IndexStore) -> None:
    entries = {e.path: e for e in (entry("a.py", symbols=[SYMBOL]), entry("pkg/b.py", b"def f(): pass\n"))}
    store.save(entries)
    assert store.load() == entries
    assert store.path.parent.name == "index" and store.path.suffix == ".msgpack"


def test_one_store_per_workspace_under_the_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIMBLE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = IndexStore(tmp_path / "one"), IndexStore(tmp_path / "two")
    assert one.path.parent == two.path.parent == tmp_path / "cache" / "index"
    assert one.path != two.path
    # The same workspace reached through another spelling maps to the same file.
    assert IndexStore(tmp_path / "one" / ".." / "one").path == one.path
    one.save({"a.py": entry("a.py")})
    assert two.load() == {}


def test_missing_store_is_an_empty_index_without_a_warning(store: IndexStore, caplog: pytest.LogCaptureFixture) -> None:
    assert store.load() == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unchanged_means_same_size_and_mtime(workspace: Path) -> None:
    path = workspace / "a.py"
    path.write_text("x = 1\n")
    st = path.stat()
    stored = FileEntry("a.py", st.st_size, st.st_mtime_ns, "0" * 64, "python")
    assert is_unchanged(stored, st)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert not is_unchanged(stored, path.stat())
    path.write_text("x = 12\n")
    assert not is_unchanged(stored, path.stat())


def test_twenty_thousand_entries_round_trip(store: IndexStore) -> None:
    entries = {}
    for i in range(20_000):
        relative = f"src/package_{i % 50}/module_{i}.py"
        entries[relative] = entry(relative, f"v{i}".encode(), symbols=[SYMBOL, {**SYMBOL, "name": f"f{i}"}])
    store.save(entries)
    started = time.perf_counter()
    loaded = store.load()
    load_s = time.perf_counter() - started
    size = store.path.stat().st_size
    assert loaded == entries, f"20,000 entries with 2 symbols each: {size:,} bytes, loaded in {load_s:.3f} s"
    # Bounded: ~105 bytes of row plus ~80 per symbol; a regression to maps or hex would show here.
    assert size < 20_000 * 400, f"20,000 entries with 2 symbols each: {size:,} bytes, loaded in {load_s:.3f} s"


def test_a_failed_write_leaves_the_old_store_and_no_temp_file(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = {"a.py": entry("a.py")}
    store.save(old)

    def fail_fsync(fd: int) -> None:  # the crash point: data written to the temp file, not yet renamed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, "fsync", fail_fsync)
    with pytest.raises(StoreSaveError) as caught:
        store.save({"b.py": entry("b.py")})
    assert "free space" in str(caught.value)
    monkeypatch.undo()
    assert store.load() == old
    assert sorted(p.name for p in store.path.parent.iterdir()) == [store.path.name]


def test_temp_files_of_an_interrupted_process_do_not_break_loading(store: IndexStore) -> None:
    store.save({"a.py": entry("a.py")})
    (store.path.parent / (store.path.name + ".abc.tmp")).write_bytes(b"\x93half")  # killed mid-write
    assert list(store.load()) == ["a.py"]


def write_document(store: IndexStore, document: object) -> None:
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_bytes(msgpack.packb(document, use_bin_type=True))


def valid_document(store: IndexStore) -> dict:
    return {"schema": SCHEMA_VERSION, "root": str(store.root), "entries": [["a.py", 1, 2, b"\0" * 32, "python", []]]}


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda s: s.path.write_bytes(b"\xc1 not msgpack at all"), "corrupt"),
        (lambda s: s.path.write_bytes(s.path.read_bytes()[:-7]), "corrupt"),  # truncated
        (lambda s: s.path.write_bytes(b""), "corrupt"),
        (lambda s: write_document(s, [1, 2, 3]), "corrupt"),
        (lambda s: write_document(s, {**valid_document(s), "schema": SCHEMA_VERSION - 1}), "schema"),
        (lambda s: write_document(s, {k: v for k, v in valid_document(s).items() if k != "schema"}), "schema"),
        (lambda s: write_document(s, {**valid_document(s), "root": "/somewhere/else"}), "another workspace"),
        (lambda s: write_document(s, {**valid_document(s), "entries": [["a.py", "big", 2, b"", "py", []]]}), "corrupt"),
        (lambda s: write_document(s, {**valid_document(s), "entries": [["a.py"]]}), "corrupt"),
        (lambda s: write_document(s, {**valid_document(s), "entries": None}), "corrupt"),
    ],
    ids=[
        "garbage", "truncated", "empty", "not-a-map", "old-schema", "no-schema", "other-root",
        "bad-row", "short-row", "no-entries",
    ],
)  # fmt: skip
def test_unusable_store_is_rebuilt_with_a_warning(
    store: IndexStore, caplog: pytest.LogCaptureFixture, damage: Callable[[IndexStore], object], says: str
) -> None:
    store.save({"a.py": entry("a.py", symbols=[SYMBOL])})
    damage(store)
    caplog.set_level(logging.WARNING, logger="fimble.context.store")

    assert store.load() == {}

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and says in warnings[0] and str(store.path) in warnings[0]
    # Rebuilt: the next save replaces the bad file and loads cleanly.
    store.save({"b.py": entry("b.py")})
    assert list(store.load()) == ["b.py"]


def test_an_unreadable_store_is_rebuilt_with_a_warning(store: IndexStore, caplog: pytest.LogCaptureFixture) -> None:
    store.path.mkdir(parents=True)  # a directory where the file should be: reading fails with EISDIR
    caplog.set_level(logging.WARNING, logger="fimble.context.store")
    assert store.load() == {}
    assert any("cannot read" in r.getMessage() for r in caplog.records)


def test_a_store_truncated_mid_write_at_any_point_is_rebuilt_with_a_warning(
    store: IndexStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A process killed mid-write without the temp-file rename (another tool, a copy, a full disk
    # on a filesystem that lies about fsync) leaves a prefix of the file: every prefix reads as
    # an empty index with one warning, never as an exception or as a part of the entries.
    store.save({f"pkg/m{i}.py": entry(f"pkg/m{i}.py", symbols=[SYMBOL]) for i in range(20)})
    whole = store.path.read_bytes()
    caplog.set_level(logging.WARNING, logger="fimble.context.store")
    for length in range(0, len(whole), 37):
        store.path.write_bytes(whole[:length])
        caplog.clear()
        assert store.load() == {}, f"a store cut at byte {length} of {len(whole)} was read"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "re-indexed" in warnings[0], (length, warnings)


def test_the_index_rebuilds_from_disk_when_its_store_was_truncated(
    workspace: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fimble.context.indexer import WorkspaceIndex

    (workspace / "client.py").write_text("class Client:\n    def get(self, url):\n        return url\n")
    (workspace / "retry.py").write_text("def backoff(attempt):\n    return 2 ** attempt\n")
    store = IndexStore(workspace, cache_dir=tmp_path / "cache")
    assert WorkspaceIndex(workspace, store).build().parsed == 2
    store.path.write_bytes(store.path.read_bytes()[: store.path.stat().st_size // 2])

    caplog.set_level(logging.WARNING, logger="fimble.context.store")
    index = WorkspaceIndex(workspace, store)
    report = index.build()
    assert (report.files, report.parsed, report.reused) == (2, 2, 0)  # every file read again
    assert [d.path for d in index.definitions("Client")] == ["client.py"]
    assert any("corrupt" in r.getMessage() and "re-indexed" in r.getMessage() for r in caplog.records)
    # The rebuilt store is whole again: the next start reuses every entry.
    assert WorkspaceIndex(workspace, store).build().reused == 2
