"""The chat service on the tiny random-weight model (an in-process engine, as `fimble complete`
uses): streaming, sessions saved before and after generating, cancellation that keeps the text,
a backend that dies mid-answer, attachments and references, secrets and ignored files refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fimble.chat.service import (
    AttachmentError,
    AttachmentRequest,
    ChatInputError,
    ChatRequest,
    ChatService,
    ChatWorkspace,
    UnknownSessionError,
)
from fimble.chat.session import SessionStore
from fimble.models.backend import EngineBackend
from fimble.context.indexer import WorkspaceIndex
from fimble.context.store import IndexStore
from fimble.models.daemon_client import DaemonUnavailableError
from fimble.models.engine import EngineConfig
from fimble.models.pool import EnginePool
from fimble.models.spec import Role, RoleConfig

SHORT = 24  # answer tokens in tests that only need some text


@pytest.fixture(scope="module")
def pool(tiny_spec):
    pool = EnginePool(RoleConfig(single_line=tiny_spec, multi_line=tiny_spec, chat=tiny_spec), EngineConfig())
    yield pool
    pool.close()


@pytest.fixture
def store(tmp_path) -> SessionStore:
    return SessionStore(tmp_path / "chats")


@pytest.fixture
def service(pool, store) -> ChatService:
    return ChatService(store, EngineBackend(pool))


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "client.py").write_text(
        "class Client:\n    def retry(self, attempts):\n        return attempts * 2\n\n\ndef compute_backoff(n):\n    return 2 ** n\n"
    )
    (root / ".env").write_text("TOKEN=ghp_" + "a" * 36 + "\n")
    (root / ".gitignore").write_text("build/\n")
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text("x = 1\n")
    return root


def indexed(repo: Path, tmp_path: Path) -> WorkspaceIndex:
    index = WorkspaceIndex(repo, IndexStore(repo, cache_dir=tmp_path / "cache"))
    index.build()
    return index


async def test_an_answer_streams_and_both_turns_are_saved(service, store):
    chunks = []
    answer = await service.ask(ChatRequest("Why does the client retry twice?", max_answer_tokens=SHORT), on_chunk=chunks.append)
    assert answer.finish_reason in ("stop", "length")
    assert "".join(chunk.text for chunk in chunks) == answer.text
    assert {chunk.message_index for chunk in chunks} <= {1} and answer.message_index == 1
    session = store.load(answer.session_id)
    assert session.title == "Why does the client retry twice?"
    assert [(m.role, m.content) for m in session.messages] == [("user", "Why does the client retry twice?"), ("assistant", answer.text)]
    assert session.messages[1].finish_reason == answer.finish_reason

    follow_up = await service.ask(ChatRequest("And the third time?", answer.session_id, max_answer_tokens=SHORT))
    assert follow_up.session_id == answer.session_id and follow_up.message_index == 3
    assert len(store.load(answer.session_id).messages) == 4
    assert store.load(answer.session_id).title == "Why does the client retry twice?"


async def test_cancel_stops_the_engine_and_keeps_the_text_so_far(service, store, pool):
    first_chunk = asyncio.Event()
    answering = asyncio.create_task(service.ask(ChatRequest("Explain everything", max_answer_tokens=1500), on_chunk=lambda c: first_chunk.set()))
    await asyncio.wait_for(first_chunk.wait(), 60)
    session_id = next(iter(service._stops))
    assert service.running(session_id)
    assert service.cancel(session_id)
    answer = await asyncio.wait_for(answering, 30)
    assert answer.finish_reason == "cancelled" and answer.text
    stored = store.load(answer.session_id).messages[-1]
    assert (stored.role, stored.content, stored.finish_reason) == ("assistant", answer.text, "cancelled")
    assert not service.running(session_id)
    engine = pool.engine_for(Role.CHAT)
    for _ in range(200):
        if engine.active_requests == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.active_requests == 0


async def test_a_cancelled_request_task_keeps_the_partial_answer(service, store):
    first_chunk = asyncio.Event()
    answering = asyncio.create_task(service.ask(ChatRequest("Explain everything", max_answer_tokens=1500), on_chunk=lambda c: first_chunk.set()))
    await asyncio.wait_for(first_chunk.wait(), 60)
    session_id = next(iter(service._stops))
    answering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answering
    stored = store.load(session_id).messages
    assert [m.role for m in stored] == ["user", "assistant"] and stored[1].finish_reason == "cancelled"


class DyingBackend(EngineBackend):
    """The real engine, whose connection 'dies' after a few pieces, as a daemon that crashes."""

    async def generate(self, call, on_text=None):
        pieces = 0

        def counting(text):
            nonlocal pieces
            pieces += 1
            on_text(text)

        task = asyncio.ensure_future(super().generate(call, counting))
        while pieces < 3 and not task.done():
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise DaemonUnavailableError("the Fimble daemon stopped; it is being restarted")


async def test_a_daemon_that_dies_mid_answer_leaves_the_text_so_far_and_says_why(pool, store):
    service = ChatService(store, DyingBackend(pool))
    chunks = []
    answer = await service.ask(ChatRequest("Explain everything", max_answer_tokens=1500), on_chunk=chunks.append)
    assert answer.finish_reason == "error" and "daemon stopped" in answer.notice
    assert answer.text and answer.text == "".join(c.text for c in chunks)
    stored = store.load(answer.session_id).messages
    assert [(m.role, m.finish_reason) for m in stored] == [("user", ""), ("assistant", "error")]
    assert stored[1].content == answer.text


async def test_file_and_symbol_references_and_attachments_are_stored(service, store, repo, tmp_path):
    workspace = ChatWorkspace(repo, indexed(repo, tmp_path))
    request = ChatRequest(
        "What does @symbol:compute_backoff do, see @file:shop/client.py.",
        attachments=(AttachmentRequest("selection", path=repo / "shop" / "client.py", start_line=1, end_line=2, text="    def retry(self, attempts):\n"),),
        max_answer_tokens=SHORT,
    )
    answer = await service.ask(request, workspace)
    session = store.load(answer.session_id)
    kinds = {(a.kind, a.path, a.name) for a in session.attachments}
    assert kinds == {("selection", "shop/client.py", ""), ("file", "shop/client.py", ""), ("symbol", "shop/client.py", "compute_backoff")}
    symbol = next(a for a in session.attachments if a.kind == "symbol")
    assert symbol.text == "def compute_backoff(n):\n    return 2 ** n\n"
    assert session.workspace == str(repo)
    # The retrieved definitions for the question are stored with it.
    assert "compute_backoff" in session.messages[0].context


async def test_an_unsaved_buffer_wins_over_the_disk(service, store, repo):
    buffers = {repo / "shop" / "client.py": "def unsaved():\n    pass\n"}
    workspace = ChatWorkspace(repo, None, lambda path: buffers.get(path))
    answer = await service.ask(ChatRequest("Look at @file:shop/client.py", max_answer_tokens=SHORT), workspace)
    assert store.load(answer.session_id).attachments[0].text == "def unsaved():\n    pass\n"


@pytest.mark.parametrize(
    "message, attachment, expected",
    [
        ("Read @file:.env", None, "secret"),
        ("Read @file:build/out.py", None, "ignored"),
        ("Read @file:shop/missing.py", None, "does not exist"),
        ("Where is @symbol:Client", None, "needs the workspace index"),
        ("Look", AttachmentRequest("file", path=Path("/etc/ssh/id_rsa")), "secret"),
    ],
)
async def test_refused_attachments_are_clear_errors_and_store_nothing(service, store, repo, message, attachment, expected):
    request = ChatRequest(message, attachments=(attachment,) if attachment else ())
    with pytest.raises(AttachmentError, match=expected):
        await service.ask(request, ChatWorkspace(repo))
    assert store.list().sessions == []


async def test_a_secret_in_an_unsaved_buffer_is_refused(service, store, repo):
    buffers = {repo / "shop" / "client.py": 'KEY = "AKIA' + "A" * 16 + '"\n'}
    with pytest.raises(AttachmentError, match="looks like"):
        await service.ask(ChatRequest("Read @file:shop/client.py"), ChatWorkspace(repo, None, lambda path: buffers.get(path)))


async def test_an_unknown_symbol_is_a_clear_error(service, repo, tmp_path):
    with pytest.raises(AttachmentError, match="no definition of 'Nowhere'"):
        await service.ask(ChatRequest("Where is @symbol:Nowhere?"), ChatWorkspace(repo, indexed(repo, tmp_path)))


@pytest.mark.parametrize("session_id", ["0" * 32, "../../etc/passwd", ""])
async def test_an_unknown_or_malformed_session_id_is_a_clear_error(service, store, session_id):
    with pytest.raises(UnknownSessionError, match="no chat session|must be a session"):
        await service.ask(ChatRequest("Hello?", session_id))
    assert store.list().sessions == []


async def test_an_empty_message_is_refused(service):
    with pytest.raises(ChatInputError, match="empty"):
        await service.ask(ChatRequest("   "))


async def test_a_question_too_long_for_the_context_is_withdrawn(service, store):
    with pytest.raises(ChatInputError, match="Shorten the question"):
        await service.ask(ChatRequest("word " * 5000, max_answer_tokens=SHORT))
    assert store.list().sessions == []
