"""The chat path, question to stored answer, as plain logic over a model backend:

    resolve attachments (+ @file: / @symbol: references) -> append the question, save
        -> retrieved definitions -> build_chat_prompt -> backend.generate (role chat, streamed)
        -> append the answer, save

The same code serves `fimble/chat` in the editor (lsp_server/chat.py, DaemonBackend) and
`fimble chat` on the command line. The question is saved before generating and the answer after,
also when it ends early: a cancelled answer keeps its text (finish reason "cancelled"), an answer
cut by a daemon that died keeps the text so far ("error", with the reason in `notice`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from fimble.chat.prompt import COUNTING_TEMPLATE, ChatBudget, ChatPromptTooLong, Tokenizer, build_chat_prompt
from fimble.chat.session import (
    Attachment,
    ChatSession,
    CorruptSessionError,
    Message,
    SessionListing,
    SessionSaveError,
    SessionStore,
    title_from,
)
from fimble.context.files import UnindexableFile, path_reason, read_source, secret_content_kind, secret_path_reason
from fimble.models.backend import Backend
from fimble.models.generation import BackendError, GenerationRequest, StopRules
from fimble.models.spec import Role

log = logging.getLogger(__name__)

# The engine's finish reasons, as the chat protocol names them.
FINISH_REASONS = {"stop_token": "stop", "stop_string": "stop", "length": "length", "cancelled": "cancelled", "error": "error"}
# Definitions retrieved for a question (before the token budget cuts them).
RETRIEVED_SNIPPETS = 8

FILE_REFERENCE = re.compile(r"(?<![\w@])@file:(\S+)")
SYMBOL_REFERENCE = re.compile(r"(?<![\w@])@symbol:([A-Za-z_$][\w$]*)")
# Sentence punctuation after a reference ("see @file:a.py.") is not part of the path.
TRAILING_PUNCTUATION = ".,;:!?)]}'\"`"


# ---------------------------------------------------------------------------------------------
# What goes in and comes out


class ChatInputError(ValueError):
    """The request cannot be answered as asked; the message says what to change."""


class UnknownSessionError(ChatInputError):
    pass


class AttachmentError(ChatInputError):
    """An attachment or reference that is missing, or refused (a secret, an ignored file)."""


class SessionBusyError(ChatInputError):
    pass


class ChatModelError(RuntimeError):
    """The configured chat model cannot answer (no chat template, a template that fails)."""


@dataclass(frozen=True)
class AttachmentRequest:
    kind: Literal["selection", "file", "symbol"]
    path: Path | None = None  # selection and file: absolute, or relative to the workspace root
    name: str = ""  # symbol
    start_line: int | None = None  # selection: 0-based, inclusive
    end_line: int | None = None
    text: str | None = None  # selection: its text, taken from the editor's buffer


@dataclass(frozen=True)
class ChatRequest:
    message: str
    session_id: str | None = None  # None starts a new session
    attachments: tuple[AttachmentRequest, ...] = ()
    max_answer_tokens: int | None = None  # None: the budget's answer_tokens


@dataclass(frozen=True)
class ChatChunk:
    session_id: str
    message_index: int  # of the answer in the session's messages
    text: str


@dataclass(frozen=True)
class ChatAnswer:
    session_id: str
    message_index: int
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    dropped_turns: int = 0
    notice: str = ""
    saved: bool = True  # False: the session file could not take the answer (the notice says why)


def _no_buffer(path: Path) -> str | None:
    return None


@dataclass
class ChatWorkspace:
    """Where attachments are read from. Files inside `root` pass the index's rules (ignore files,
    secrets); files outside it pass the secret rules. An editor buffer's unsaved text wins over
    the disk."""

    root: Path | None = None
    index: object | None = None  # a built context.indexer.WorkspaceIndex, or None
    buffer_text: Callable[[Path], str | None] = field(default=_no_buffer)

    def absolute(self, path: Path) -> Path:
        if path.is_absolute():
            return path
        if self.root is None:
            raise AttachmentError(f"{path} is relative, but there is no workspace folder; give an absolute path")
        return self.root / path

    def shown_path(self, path: Path) -> str:
        """The path the model and the user see: workspace-relative when inside the workspace."""
        if self.root is not None:
            try:
                return path.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                pass
        return str(path)

    def read(self, path: Path) -> str:
        """The text of a file the user asked for, or AttachmentError saying why not."""
        path = self.absolute(path)
        shown = self.shown_path(path)
        self.check_path(path)
        text = self.buffer_text(path)
        if text is None:
            if not path.exists():
                raise AttachmentError(f"{shown} does not exist")
            try:
                return read_source(path)
            except UnindexableFile as error:
                raise AttachmentError(f"{shown} cannot be attached ({error.reason})") from None
        if (credential := secret_content_kind(text)) is not None:
            raise AttachmentError(f"{shown} is not sent to the model: it looks like it holds a {credential}")
        return text

    def check_path(self, path: Path) -> None:
        shown = self.shown_path(path)
        reason = None
        if self.root is not None and path.resolve().is_relative_to(self.root.resolve()):
            reason = path_reason(self.root, path)
        else:
            reason = secret_path_reason(path)
        if reason is not None:
            raise AttachmentError(
                f"{shown} is not sent to the model ({reason}); Fimble never reads secrets or ignored files. "
                "Copy the part you need into the question instead."
            )

    def read_relative(self, relative: str) -> str | None:
        """For retrieval: the text of a file of the index (which has passed the ignore and
        secret-name rules already), None when it cannot be read or holds a secret now."""
        if self.root is None:
            return None
        path = self.root / relative
        text = self.buffer_text(path)
        if text is None:
            try:
                return read_source(path)
            except UnindexableFile:
                return None
        return None if secret_content_kind(text) is not None else text


# ---------------------------------------------------------------------------------------------
# Attachments


def resolve_attachments(request: ChatRequest, workspace: ChatWorkspace) -> list[Attachment]:
    """The request's attachments and the message's @file:/@symbol: references, read and checked."""
    attachments: list[Attachment] = []
    for item in request.attachments:
        if item.kind == "symbol":
            attachments.extend(symbol_attachments(item.name, workspace))
        else:
            attachments.append(_resolve(item, workspace))
    for reference in FILE_REFERENCE.findall(request.message):
        attachments.append(_resolve(AttachmentRequest("file", path=_referenced_path(reference, workspace)), workspace))
    for name in SYMBOL_REFERENCE.findall(request.message):
        attachments.extend(symbol_attachments(name, workspace))
    return attachments


def _referenced_path(reference: str, workspace: ChatWorkspace) -> Path:
    stripped = reference.rstrip(TRAILING_PUNCTUATION)
    if stripped != reference and stripped and not workspace.absolute(Path(reference)).exists():
        return Path(stripped)
    return Path(reference)


def _resolve(item: AttachmentRequest, workspace: ChatWorkspace) -> Attachment:
    if item.path is None:
        raise AttachmentError(f"a {item.kind} attachment needs a path")
    path = workspace.absolute(item.path)
    if item.kind == "file":
        return Attachment("file", workspace.shown_path(path), workspace.read(path))
    if item.kind == "selection":
        workspace.check_path(path)
        text = item.text if item.text is not None else _lines(workspace.read(path), item.start_line, item.end_line)
        if (credential := secret_content_kind(text)) is not None:
            raise AttachmentError(f"the selection in {workspace.shown_path(path)} is not sent to the model: it looks like a {credential}")
        return Attachment("selection", workspace.shown_path(path), text, item.start_line, item.end_line)
    raise AttachmentError(f"unknown attachment kind {item.kind!r}; expected selection, file or symbol")


def symbol_attachments(name: str, workspace: ChatWorkspace, limit: int = 3) -> list[Attachment]:
    """The definitions of `name` in the workspace index (at most `limit`), as attachments."""
    if workspace.index is None:
        raise AttachmentError(
            f"@symbol:{name} needs the workspace index, which is not ready: open a folder in the editor "
            "(or wait for indexing to finish), or attach the file with @file:PATH"
        )
    definitions = workspace.index.definitions(name)
    if not definitions:
        raise AttachmentError(f"no definition of {name!r} in the workspace index; check the spelling, or attach the file with @file:PATH")
    attachments = []
    for definition in definitions[:limit]:
        symbol = definition.symbol
        text = _lines(workspace.read(Path(definition.path)), symbol.start_line, symbol.end_line)
        attachments.append(Attachment("symbol", definition.path, text, symbol.start_line, symbol.end_line, name))
    return attachments


def _lines(text: str, start: int | None, end: int | None) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[start or 0 : None if end is None else end + 1])


# ---------------------------------------------------------------------------------------------
# The service


class ChatService:
    """Asks and answers in sessions; one answer at a time per session."""

    def __init__(self, store: SessionStore, backend: Backend, budget: ChatBudget = ChatBudget()):
        self.store = store
        self.backend = backend
        self.budget = budget
        self._stops: dict[str, asyncio.Event] = {}  # session id -> set to stop its running answer
        # One search per workspace index: it keeps its BM25 index between questions.
        self._search: tuple[object, object] | None = None  # (index, chat.retrieve.SymbolSearch)
        self._search_lock = threading.Lock()

    # --- sessions ---------------------------------------------------------------------------------

    def open_session(self, session_id: str | None, workspace: str = "") -> ChatSession:
        if session_id is None:
            return self.store.create(workspace=workspace)
        if not isinstance(session_id, str) or not session_id:
            raise UnknownSessionError(f"sessionId must be a session's id (a string), got {session_id!r}")
        try:
            return self.store.load(session_id)
        except KeyError:
            raise UnknownSessionError(f"there is no chat session {session_id!r}; list them with `fimble chat --list` (or fimble/chatSessions), or start a new session") from None
        except CorruptSessionError as error:
            raise ChatInputError(str(error)) from None

    def list_sessions(self) -> SessionListing:
        return self.store.list()

    def get_session(self, session_id: str) -> ChatSession:
        return self.open_session(session_id if session_id is not None else "")

    def delete_session(self, session_id: str) -> bool:
        if session_id in self._stops:
            raise SessionBusyError(f"the session {session_id} is answering; stop the answer before deleting it")
        return self.store.delete(session_id)

    def running(self, session_id: str) -> bool:
        return session_id in self._stops

    def cancel_all(self) -> int:
        """Stop every running answer (Ctrl-C in `fimble chat`); how many there were."""
        for stop in self._stops.values():
            stop.set()
        return len(self._stops)

    def cancel(self, session_id: str) -> bool:
        """Stop the session's running answer (kept with finish reason "cancelled"); False if none runs."""
        stop = self._stops.get(session_id)
        if stop is not None:
            stop.set()
        return stop is not None

    # --- asking -----------------------------------------------------------------------------------

    async def ask(
        self,
        request: ChatRequest,
        workspace: ChatWorkspace = ChatWorkspace(),
        on_chunk: Callable[[ChatChunk], None] | None = None,
    ) -> ChatAnswer:
        """Answer `request.message` in its session. ChatInputError (nothing stored) for a bad
        request; problems with the model end the answer with finish reason "error" instead."""
        if not isinstance(request.message, str) or not request.message.strip():
            raise ChatInputError("the message is empty; write a question")
        if request.session_id is not None and request.session_id in self._stops:
            raise SessionBusyError(f"the session {request.session_id} is still answering; wait for it or cancel it with fimble/chatCancel")
        attachments = resolve_attachments(request, workspace)  # before anything is stored
        is_new = request.session_id is None
        session = self.open_session(request.session_id, str(workspace.root or ""))
        stop = self._stops[session.id] = asyncio.Event()
        try:
            return await self._answer(session, is_new, request, attachments, workspace, stop, on_chunk)
        finally:
            del self._stops[session.id]

    async def _answer(self, session, is_new, request, attachments, workspace, stop, on_chunk) -> ChatAnswer:
        session.add_attachments(attachments)
        question = Message("user", request.message, created=time.time())
        session.messages.append(question)
        if not session.title:
            session.title = title_from(request.message)
        self.store.save(session)  # a crash from here on loses no question
        index = len(session.messages)
        streamed: list[str] = []

        def on_text(delta: str) -> None:
            streamed.append(delta)
            if on_chunk is not None and delta:
                on_chunk(ChatChunk(session.id, index, delta))

        generation: asyncio.Future | None = None
        finish, notice, dropped, text = "error", "", 0, ""
        try:
            served = await self.backend.model(Role.CHAT)
            tokenizer, context_length = served.tokenizer, served.info.context_length
            template = served.info.chat_template or (COUNTING_TEMPLATE if served.info.takes_text else "")
            if not template:
                raise ChatModelError("the chat model has no chat template (a base model?); configure an instruct model for [models.chat]")
            budget = dataclasses.replace(self.budget, context_tokens=min(self.budget.context_tokens, context_length))
            if request.max_answer_tokens is not None:
                budget = dataclasses.replace(budget, answer_tokens=max(1, request.max_answer_tokens))
            question.context = await asyncio.to_thread(self._retrieved, request.message, workspace, tokenizer, budget)
            try:
                prompt = build_chat_prompt(session, tokenizer, template, budget)
            except ChatPromptTooLong as error:
                self._withdraw(session, is_new)
                raise ChatInputError(str(error)) from None
            except Exception as error:  # jinja errors, a template without a generation prompt
                raise ChatModelError(f"the chat model's template could not be rendered: {error}") from error
            dropped, notice = prompt.dropped_turns, prompt.notice
            max_new_tokens = max(1, min(budget.answer_tokens, context_length - len(prompt.token_ids)))
            # The end-of-turn tokens as ids, and as strings for a vocabulary that spells them in pieces.
            end_of_turn = StopRules(token_ids=served.chat_stop_token_ids, strings=served.family.chat_stop)
            request = GenerationRequest(Role.CHAT, max_new_tokens, tuple(prompt.token_ids), prompt.text, prompt.messages, end_of_turn)
            generation = asyncio.ensure_future(self.backend.generate(request, lambda chunk: on_text(chunk.text)))
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({generation, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if generation.done():
                generated = generation.result()
                finish = FINISH_REASONS.get(generated.finish_reason, "stop")
                text = self._reconcile(generated.text, streamed, on_text)
                if generated.error:
                    notice = f"The answer stopped: {generated.error}"
            else:  # fimble/chatCancel or Ctrl-C: the engine stops the request, the text so far stays
                await _cancelled(generation)
                finish, text = "cancelled", "".join(streamed)
        except asyncio.CancelledError:  # the request itself was cancelled ($/cancelRequest)
            if generation is not None:
                await _cancelled(generation)
            self._record(session, "".join(streamed), "cancelled")
            raise
        except (BackendError, ChatModelError, OSError) as error:
            finish, text = "error", "".join(streamed)
            notice = f"The answer stopped: {error}"
        if finish == "error" and not notice:
            notice = "The model failed while answering; see the daemon log (fimble daemon status)."
        if finish == "cancelled":
            notice = notice or "Stopped; the answer so far is kept."
        try:
            self._record(session, text, finish)
        except SessionSaveError as error:
            # The answer exists and was streamed: the reply still carries it, and says it is not kept.
            notice = f"{notice} The answer was not saved: {error}".strip()
            return ChatAnswer(session.id, index, text, finish, dropped, notice, saved=False)
        return ChatAnswer(session.id, index, text, finish, dropped, notice)

    def _record(self, session: ChatSession, text: str, finish: str) -> None:
        session.messages.append(Message("assistant", text, finish_reason=finish, created=time.time()))
        self.store.save(session)

    def _withdraw(self, session: ChatSession, is_new: bool) -> None:
        """Take back a question that cannot be asked (too long), leaving no trace of it."""
        session.messages.pop()
        if is_new and not session.messages:
            self.store.delete(session.id)
        else:
            self.store.save(session)

    @staticmethod
    def _reconcile(text: str, streamed: list[str], on_text: Callable[[str], None]) -> str:
        """The answer as the chunks spell it: chunks concatenated always equal the result."""
        so_far = "".join(streamed)
        if text.startswith(so_far):
            if len(text) > len(so_far):
                on_text(text[len(so_far) :])
            return text
        log.warning("the streamed answer differs from the final one; keeping the streamed text")
        return so_far

    def _retrieved(self, message: str, workspace: ChatWorkspace, tokenizer: Tokenizer, budget: ChatBudget) -> str:
        """Definitions from the workspace index that may help with the question ("" without one).
        Runs in a worker thread: the first search of a workspace reads its files."""
        if workspace.index is None or budget.retrieved_tokens <= 0:
            return ""
        from fimble.chat.retrieve import SymbolSearch, retrieved_context

        try:
            with self._search_lock:
                if self._search is None or self._search[0] is not workspace.index:
                    self._search = (workspace.index, SymbolSearch(workspace.index, workspace.read_relative))
                snippets = self._search[1].search(message, RETRIEVED_SNIPPETS)
            return retrieved_context(snippets, lambda text: len(tokenizer.encode(text, add_special_tokens=False)), budget.retrieved_tokens)
        except Exception:  # retrieval is a help; a bug in it must not lose the question
            log.exception("retrieving definitions for a chat question failed")
            return ""


async def _cancelled(generation: asyncio.Future) -> None:
    """Cancel a generation (the backend then stops the engine's request) and wait for it to end."""
    generation.cancel()
    try:
        await generation
    except asyncio.CancelledError:
        pass
    except Exception as error:
        log.info("a cancelled chat generation ended with %s", error)
