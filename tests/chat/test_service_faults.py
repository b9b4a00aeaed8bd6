"""The chat service when the disk fails during a save: a question that cannot be stored is a
SessionSaveError (nothing is asked), and an answer that cannot be stored still reaches the user,
with a notice that it was not saved; the session as last saved stays whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from fimble.chat.service import ChatRequest, ChatService
from fimble.chat.session import SessionSaveError, SessionStore
from fimble.models.backend import EngineBackend
from tests.chat.test_service import SHORT, pool  # noqa: F401  (the module's tiny-model pool fixture)
from tests.filesystems import fill, remount_read_only, small_tmpfs


class DiskFillingBackend(EngineBackend):
    """The real engine; the data dir's filesystem fills up while it answers."""

    def __init__(self, engines, data: Path):
        super().__init__(engines)
        self.data = data

    async def generate(self, call, on_text=None):
        fill(self.data)
        return await super().generate(call, on_text)


async def test_the_disk_fills_while_answering_the_answer_still_reaches_the_user(pool, tmp_path):  # noqa: F811
    with small_tmpfs(tmp_path / "fs", size_kib=512) as data:
        store = SessionStore(data / "chats")
        service = ChatService(store, EngineBackend(pool))
        first = await service.ask(ChatRequest("Why does the client retry twice?", max_answer_tokens=SHORT))
        saved = store.load(first.session_id)

        service.backend = DiskFillingBackend(pool, data)
        answer = await service.ask(ChatRequest("And the backoff?", session_id=first.session_id, max_answer_tokens=SHORT))

        assert answer.finish_reason in ("stop", "length") and answer.text
        assert not answer.saved
        assert "The answer was not saved" in answer.notice and "No space left on device" in answer.notice
        # On disk: the session as saved with the question, before the disk filled up.
        on_disk = store.load(first.session_id)
        assert on_disk.messages[:2] == saved.messages
        assert [(m.role, m.content) for m in on_disk.messages[2:]] == [("user", "And the backoff?")]


async def test_a_read_only_data_dir_refuses_the_question_and_keeps_the_session(pool, tmp_path):  # noqa: F811
    with small_tmpfs(tmp_path / "fs") as data:
        store = SessionStore(data / "chats")
        service = ChatService(store, EngineBackend(pool))
        first = await service.ask(ChatRequest("Why does the client retry twice?", max_answer_tokens=SHORT))
        saved = store.load(first.session_id)
        remount_read_only(data)

        with pytest.raises(SessionSaveError, match="Read-only file system"):
            await service.ask(ChatRequest("And then?", session_id=first.session_id, max_answer_tokens=SHORT))
        with pytest.raises(SessionSaveError, match="Check free space and permissions"):
            await service.ask(ChatRequest("A new chat"))
        assert store.load(first.session_id) == saved
