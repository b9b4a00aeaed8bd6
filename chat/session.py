"""Chat sessions and where they are kept: one msgpack file per session under the user data dir.

    <data>/chats/<id>.msgpack
    {"schema": SCHEMA_VERSION, "id", "title", "created", "updated", "workspace",
     "messages": [{"role", "content", "finish_reason", "context", "created"}, ...],
     "attachments": [{"kind", "path", "text", "start_line", "end_line", "name"}, ...]}

Unlike the workspace index (a cache, rebuilt when unreadable), a session is the user's own data:
a file that cannot be read is reported (`SessionListing.problems`, `CorruptSessionError`) and left
on disk byte for byte, never rewritten or deleted. Writes go to a temporary file in the same
directory, fsynced, then `os.replace`d, so a crash mid-save leaves the previous file whole.
Two editor windows saving the same session at once: the last rename wins, nothing is torn.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgpack

from fimble import dirs
from fimble.context.store import write_atomically
from fimble.models.conversion import ConversionError, structure, unstructure

log = logging.getLogger(__name__)

# Bump when the layout changes; a file with another schema is reported, not guessed at.
SCHEMA_VERSION = 1
TITLE_CHARS = 60
_SESSION_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex; anything else never reaches a path
_SESSION_FILE = re.compile(r"([0-9a-f]{32})\.msgpack")


# ---------------------------------------------------------------------------------------------
# What a session holds


AttachmentKind = Literal["selection", "file", "symbol"]


@dataclass
class Attachment:
    kind: AttachmentKind
    path: str  # workspace-relative path shown to the model ("" for none)
    text: str
    start_line: int | None = None  # 0-based, selections and symbols
    end_line: int | None = None
    name: str = ""  # symbol name for kind "symbol"

    def same_source(self, other: Attachment) -> bool:
        """Whether both point at the same thing (the text may have changed since)."""
        return (self.kind, self.path, self.start_line, self.end_line, self.name) == (
            other.kind,
            other.path,
            other.start_line,
            other.end_line,
            other.name,
        )


@dataclass
class Message:
    role: Literal["user", "assistant"]
    content: str
    finish_reason: str = ""  # assistant: "stop" | "length" | "cancelled" | "error"
    context: str = ""  # user: retrieved definitions rendered for this turn, stored so re-rendering is identical
    created: float = field(default_factory=time.time)


@dataclass
class ChatSession:
    id: str
    title: str
    created: float
    updated: float
    messages: list[Message]
    attachments: list[Attachment]
    workspace: str = ""

    def add_attachments(self, new: list[Attachment]) -> list[Attachment]:
        """Append the attachments not already present (same kind, path, range and name); returns
        those added."""
        added: list[Attachment] = []
        for attachment in new:
            if not any(attachment.same_source(present) for present in self.attachments):
                self.attachments.append(attachment)
                added.append(attachment)
        return added


def title_from(text: str) -> str:
    """A session's title from its first question: the first TITLE_CHARS characters, whitespace
    collapsed, cut with an ellipsis."""
    collapsed = " ".join(text.split())
    if not collapsed:
        return "New chat"
    if len(collapsed) <= TITLE_CHARS:
        return collapsed
    return collapsed[: TITLE_CHARS - 1].rstrip() + "…"


# ---------------------------------------------------------------------------------------------
# Errors and results


class CorruptSessionError(Exception):
    """A session file exists but cannot be read; it is left on disk untouched."""

    def __init__(self, path: Path, reason: str):
        super().__init__(
            f"the chat session file {path} cannot be read ({reason}); it was left as it is. "
            f"Move it away or delete it to stop this message."
        )
        self.path = path
        self.reason = reason


class SessionSaveError(OSError):
    """A session could not be written; the previous file, if any, is left as it was."""


@dataclass(frozen=True)
class SessionListing:
    sessions: list[ChatSession]  # newest first
    problems: list[str]  # one readable line per session file that could not be read


# ---------------------------------------------------------------------------------------------
# The store


def default_chats_dir() -> Path:
    return dirs.data_dir() / "chats"


class SessionStore:
    def __init__(self, directory: Path | None = None):
        self.directory = directory or default_chats_dir()
        if not self.directory.is_dir():
            # Chats may quote private code: only the user may list or read them.
            self.directory.mkdir(parents=True, mode=0o700, exist_ok=True)
            os.chmod(self.directory, 0o700)  # mkdir's mode is masked by the umask

    def path_for(self, session_id: str) -> Path:
        """KeyError for anything but a plain hex id, so no id can name a file elsewhere."""
        if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
            raise KeyError(session_id)
        return self.directory / f"{session_id}.msgpack"

    def create(self, title: str = "", workspace: str = "") -> ChatSession:
        while True:  # never reuse a file name, not even an unreadable file's
            session_id = uuid.uuid4().hex
            if not self.path_for(session_id).exists():
                break
        now = time.time()
        session = ChatSession(session_id, title, now, now, [], [], workspace)
        self.save(session)
        return session

    def save(self, session: ChatSession) -> None:
        """Write the session atomically (readers see the old file or the new one); sets `updated`."""
        path = self.path_for(session.id)
        session.updated = time.time()
        data = msgpack.packb(_session_to_document(session), use_bin_type=True)
        try:
            write_atomically(path, data)
        except OSError as error:
            raise SessionSaveError(
                f"could not save the chat session to {path} ({error}); the session as last saved is left as "
                f"it was. Check free space and permissions in {self.directory}."
            ) from error

    def load(self, session_id: str) -> ChatSession:
        """KeyError if there is no such session; CorruptSessionError if its file is unreadable."""
        path = self.path_for(session_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(session_id) from None
        except OSError as error:
            raise CorruptSessionError(path, f"cannot read it: {error.strerror}") from error
        session = _session_from_bytes(raw, path)
        if session.id != session_id:
            raise CorruptSessionError(path, f"it holds the session {session.id!r}, not {session_id!r}")
        return session

    def list(self) -> SessionListing:
        """All readable sessions, most recently updated first; unreadable files are reported."""
        sessions: list[ChatSession] = []
        problems: list[str] = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            names = []
        for name in names:
            match = _SESSION_FILE.fullmatch(name)
            if match is None:  # temporary files of a save in progress, anything else
                continue
            try:
                sessions.append(self.load(match.group(1)))
            except KeyError:
                continue  # deleted meanwhile
            except CorruptSessionError as error:
                log.warning("%s", error)
                problems.append(str(error))
        sessions.sort(key=lambda session: session.updated, reverse=True)
        return SessionListing(sessions, problems)

    def delete(self, session_id: str) -> bool:
        try:
            self.path_for(session_id).unlink()
        except (KeyError, FileNotFoundError):
            return False
        return True


# ---------------------------------------------------------------------------------------------
# Files


def _session_to_document(session: ChatSession) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, **unstructure(session)}


def _session_from_bytes(raw: bytes, path: Path) -> ChatSession:
    try:
        document = msgpack.unpackb(raw, raw=False)
    except Exception as error:  # msgpack raises ValueError, its own errors, even RecursionError
        raise CorruptSessionError(path, f"not msgpack: {type(error).__name__}: {error}") from error
    if not isinstance(document, dict):
        raise CorruptSessionError(path, "not a map")
    if document.get("schema") != SCHEMA_VERSION:
        raise CorruptSessionError(
            path, f"its schema is {document.get('schema')!r}; this Fimble reads {SCHEMA_VERSION} (written by another version?)"
        )
    fields_ = {key: value for key, value in document.items() if key != "schema"}
    try:
        return structure(fields_, ChatSession, "session")
    except ConversionError as error:
        raise CorruptSessionError(path, f"malformed: {'; '.join(error.problems)}") from None


def _typed(value: Any, expected: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, expected) or isinstance(value, bool):
        raise TypeError(f"{name} is {type(value).__name__}")
    return value
