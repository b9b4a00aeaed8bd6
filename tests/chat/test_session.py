"""Chat sessions on disk: round trip, survival across a restart, unreadable files reported and left
byte for byte, atomic writes, ids that cannot name another file, a private directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgpack
import pytest

from fimble.chat import session as session_module
from fimble.chat.session import (
    SCHEMA_VERSION,
    Attachment,
    ChatSession,
    CorruptSessionError,
    Message,
    SessionStore,
    default_chats_dir,
    title_from,
)


def filled_session(store: SessionStore) -> ChatSession:
    session = store.create(title="Retry logic", workspace="/home/me/project")
    session.messages += [
        Message("user", "Why does the client retry twice?", context="src/retry.py\n```python\ndef f(): ...\n```"),
        Message("assistant", "Because `MAX_RETRIES` is 2.\n", finish_reason="stop"),
        Message("user", "And the backoff?"),
        Message("assistant", "It dou", finish_reason="cancelled"),
    ]
    session.add_attachments([Attachment("selection", "src/client.py", "retry()\n", start_line=3, end_line=3)])
    store.save(session)
    return session


def test_round_trip_and_restart(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "chats")
    session = filled_session(store)
    assert store.load(session.id) == session
    # A new store on the same directory (the editor restarted) reads the same session.
    reopened = SessionStore(tmp_path / "chats").load(session.id)
    assert reopened == session
    assert reopened.messages[3].finish_reason == "cancelled"
    assert reopened.messages[0].context.startswith("src/retry.py")
    assert reopened.attachments[0].start_line == 3


def test_list_is_newest_first_and_delete_removes(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    first, second = store.create("first"), store.create("second")
    first.messages.append(Message("user", "again"))
    store.save(first)  # now the most recently updated
    listing = store.list()
    assert [s.id for s in listing.sessions] == [first.id, second.id]
    assert listing.problems == []
    assert store.delete(second.id) is True
    assert store.delete(second.id) is False
    with pytest.raises(KeyError):
        store.load(second.id)
    assert [s.id for s in store.list().sessions] == [first.id]


def test_save_updates_the_updated_time(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = store.create()
    session.updated = 0.0
    store.save(session)
    assert store.load(session.id).updated > 0.0


@pytest.mark.parametrize(
    "content",
    [
        b"\xc1\xff not msgpack",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"schema": SCHEMA_VERSION + 1, "id": "x"}),
        msgpack.packb({"schema": SCHEMA_VERSION, "id": "a", "title": 3}),
        b"",
    ],
    ids=["garbage", "not-a-map", "newer-schema", "wrong-types", "empty"],
)
def test_unreadable_file_is_reported_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    store = SessionStore(tmp_path)
    good = store.create("fine")
    bad_id = "0123456789abcdef0123456789abcdef"
    bad_path = tmp_path / f"{bad_id}.msgpack"
    bad_path.write_bytes(content)

    listing = store.list()
    assert [s.id for s in listing.sessions] == [good.id]
    assert len(listing.problems) == 1 and str(bad_path) in listing.problems[0]
    with pytest.raises(CorruptSessionError) as raised:
        store.load(bad_id)
    assert raised.value.path == bad_path
    assert "Move it away or delete it" in str(raised.value)
    store.save(good)
    store.list()
    assert bad_path.read_bytes() == content


def test_a_file_holding_another_id_is_corrupt(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = store.create()
    other = "f" * 32
    (tmp_path / f"{other}.msgpack").write_bytes((tmp_path / f"{session.id}.msgpack").read_bytes())
    with pytest.raises(CorruptSessionError):
        store.load(other)


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = filled_session(store)
    for _ in range(3):
        store.save(session)
    assert sorted(os.listdir(tmp_path)) == [f"{session.id}.msgpack"]
    assert stat.S_IMODE((tmp_path / f"{session.id}.msgpack").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SessionStore(tmp_path)
    session = filled_session(store)
    before = (tmp_path / f"{session.id}.msgpack").read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(session_module.os, "replace", failing_replace)
    session.messages.append(Message("user", "lost"))
    with pytest.raises(session_module.SessionSaveError, match="No space left"):
        store.save(session)
    assert (tmp_path / f"{session.id}.msgpack").read_bytes() == before
    assert os.listdir(tmp_path) == [f"{session.id}.msgpack"]


@pytest.mark.parametrize(
    "bad_id", ["../escape", "..", "", "ABCDEF0123456789ABCDEF0123456789", "0" * 31, "0" * 33, "/etc/passwd", "0" * 32 + "\n"]
)
def test_ids_that_are_not_plain_hex_are_rejected(tmp_path: Path, bad_id: str) -> None:
    store = SessionStore(tmp_path / "chats")
    (tmp_path / "escape.msgpack").write_bytes(b"outside")
    with pytest.raises(KeyError):
        store.load(bad_id)
    assert store.delete(bad_id) is False
    assert (tmp_path / "escape.msgpack").exists()


def test_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIMBLE_DATA_DIR", str(tmp_path / "data"))
    assert default_chats_dir() == tmp_path / "data" / "chats"
    old_umask = os.umask(0o022)
    try:
        store = SessionStore()
    finally:
        os.umask(old_umask)
    assert store.directory == tmp_path / "data" / "chats"
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700


def test_create_never_reuses_an_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = "a" * 32
    (tmp_path / f"{taken}.msgpack").write_bytes(b"someone's unreadable chat")
    ids = iter([taken, "b" * 32])

    class FixedUuid:
        def __init__(self) -> None:
            self.hex = next(ids)

    monkeypatch.setattr(session_module.uuid, "uuid4", FixedUuid)
    session = SessionStore(tmp_path).create()
    assert session.id == "b" * 32
    assert (tmp_path / f"{taken}.msgpack").read_bytes() == b"someone's unreadable chat"


def test_add_attachments_skips_duplicates() -> None:
    session = ChatSession("0" * 32, "", 0.0, 0.0, [], [])
    selection = Attachment("selection", "a.py", "x = 1\n", 0, 0)
    added = session.add_attachments([selection, Attachment("file", "a.py", "x = 1\ny = 2\n")])
    assert len(added) == 2
    again = session.add_attachments([Attachment("selection", "a.py", "x = 2\n", 0, 0), Attachment("selection", "a.py", "y = 2\n", 1, 1)])
    assert again == [Attachment("selection", "a.py", "y = 2\n", 1, 1)]
    assert len(session.attachments) == 3


def test_title_from_first_message() -> None:
    assert title_from("  Why does\n the client   retry? ") == "Why does the client retry?"
    long = title_from("word " * 40)
    assert len(long) == 60 and long.endswith("…")
    assert title_from("   ") == "New chat"
