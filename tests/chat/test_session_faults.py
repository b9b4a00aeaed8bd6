"""Chat sessions under faults of the disk: the data dir full or read-only during a save, a file
size limit, and a session file cut short mid-write. A failed save is a SessionSaveError that says
what happened and what to check, and the session as last saved stays whole and loads."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fimble.chat.session import CorruptSessionError, Message, SessionSaveError, SessionStore
from tests.chat.test_session import filled_session
from tests.filesystems import fill, remount_read_only, small_tmpfs


def session_file(store: SessionStore, session_id: str) -> Path:
    return store.directory / f"{session_id}.msgpack"


def test_a_full_disk_during_a_save_keeps_the_saved_session(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as data:
        store = SessionStore(data / "chats")
        session = filled_session(store)
        saved = store.load(session.id)
        before = session_file(store, session.id).read_bytes()
        assert fill(data) > 0

        session.messages.append(Message("user", "A question the full disk cannot take. " * 50))
        with pytest.raises(SessionSaveError) as failed:
            store.save(session)

        message = str(failed.value)
        assert "No space left on device" in message and "Check free space and permissions" in message
        assert session_file(store, session.id).read_bytes() == before
        assert store.load(session.id) == saved
        assert os.listdir(store.directory) == [f"{session.id}.msgpack"]  # no temporary file left


def test_a_read_only_data_dir_during_a_save_keeps_the_saved_session(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as data:
        store = SessionStore(data / "chats")
        session = filled_session(store)
        saved = store.load(session.id)
        before = session_file(store, session.id).read_bytes()
        remount_read_only(data)

        session.messages.append(Message("user", "One more question"))
        with pytest.raises(SessionSaveError) as failed:
            store.save(session)
        with pytest.raises(SessionSaveError):
            store.create("a new chat")  # a new session cannot be started either

        assert "Read-only file system" in str(failed.value) and str(store.directory) in str(failed.value)
        assert session_file(store, session.id).read_bytes() == before
        assert store.load(session.id) == saved
        assert [s.id for s in store.list().sessions] == [session.id]


SAVE_UNDER_A_FILE_SIZE_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from fimble.chat.session import Message, SessionSaveError, SessionStore

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    store = SessionStore(Path(sys.argv[1]))
    session = store.load(sys.argv[2])
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    session.messages.append(Message("assistant", "x" * 2 * limit, finish_reason="stop"))
    try:
        store.save(session)
    except SessionSaveError as error:
        print(error)
        sys.exit(3)
    """
)


def test_a_file_size_limit_during_a_save_keeps_the_saved_session(tmp_path: Path) -> None:
    """Needs no privilege: RLIMIT_FSIZE in a child process makes the write fail as a full disk does."""
    store = SessionStore(tmp_path / "chats")
    session = filled_session(store)
    before = session_file(store, session.id).read_bytes()
    limit = len(before) + 4096
    child = subprocess.run(
        [sys.executable, "-c", SAVE_UNDER_A_FILE_SIZE_LIMIT, str(store.directory), session.id, str(limit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 3, child.stderr
    assert "File too large" in child.stdout and "Check free space" in child.stdout
    assert session_file(store, session.id).read_bytes() == before
    assert store.load(session.id) == session
    assert os.listdir(store.directory) == [f"{session.id}.msgpack"]


def test_a_session_file_cut_short_mid_write_is_reported_and_kept_byte_for_byte(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A session is the user's own data, not a cache: a truncated file is never rebuilt or
    replaced. It is reported (with a warning in the log) and left as it is, for the user to
    recover or delete, and every other session still loads."""
    store = SessionStore(tmp_path)
    damaged = filled_session(store)
    intact = filled_session(store)
    whole = session_file(store, damaged.id).read_bytes()
    caplog.set_level(logging.WARNING, logger="fimble.chat.session")
    for length in range(0, len(whole), 23):
        session_file(store, damaged.id).write_bytes(whole[:length])
        caplog.clear()
        with pytest.raises(CorruptSessionError, match="Move it away or delete it"):
            store.load(damaged.id)
        listing = store.list()
        assert [s.id for s in listing.sessions] == [intact.id], f"a session cut at byte {length} was read"
        assert len(listing.problems) == 1 and damaged.id in listing.problems[0]
        assert any(damaged.id in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert session_file(store, damaged.id).read_bytes() == whole[:length]
