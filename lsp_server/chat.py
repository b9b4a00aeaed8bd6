"""The chat messages of `fimble lsp` (docs/chat-protocol.md): thin handlers over chat.service.

    fimble/chat          -> ChatService.ask, streaming fimble/chatChunk notifications
    fimble/chatCancel    -> ChatService.cancel
    fimble/chatSessions  -> list / get / delete
    textDocument/codeAction on a selection -> Explain / Fix / Write tests (command fimble.chatAbout,
                            which sends fimble/openChat to the editor)
    fimble.applyCodeBlock -> workspace/applyEdit

Each handler converts the JSON params (positions are UTF-16, as everywhere in LSP), calls the
service and converts the result. Bad params get an InvalidParams error that says what is wrong.
A chat answer runs as its own request task, and the daemon schedules the chat role after
completions, so typing stays served while an answer streams.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from lsprotocol import types
from pygls.exceptions import JsonRpcInternalError, JsonRpcInvalidParams
from pygls.uris import from_fs_path, to_fs_path
from pygls.workspace import TextDocument

from fimble.chat.service import AttachmentRequest, ChatAnswer, ChatChunk, ChatInputError, ChatRequest, ChatService, ChatWorkspace
from fimble.chat.session import SessionSaveError
from fimble.context.files import secret_reason
from fimble.models.conversion import ConversionError, camel_case, structure, unstructure

log = logging.getLogger(__name__)
T = TypeVar("T")

CHAT = "fimble/chat"
CHAT_CANCEL = "fimble/chatCancel"
CHAT_SESSIONS = "fimble/chatSessions"
CHAT_CHUNK = "fimble/chatChunk"
OPEN_CHAT = "fimble/openChat"
CHAT_ABOUT_COMMAND = "fimble.chatAbout"
APPLY_CODE_BLOCK_COMMAND = "fimble.applyCodeBlock"

# Code actions on a selection: action -> (title, kind, the question the chat view starts with).
ACTIONS = {
    "explain": ("Fimble: Explain", types.CodeActionKind.Refactor, "Explain this code"),
    "fix": ("Fimble: Fix", types.CodeActionKind.QuickFix, "Find the bugs in this code and fix them"),
    "tests": ("Fimble: Write tests", types.CodeActionKind.Refactor, "Write tests for this code"),
}


def invalid(message: str) -> JsonRpcInvalidParams:
    return JsonRpcInvalidParams(f"Fimble: {message}")


# --- the params of the chat messages (docs/chat-protocol.md), as the editor sends them --------------


@camel_case
@dataclass(frozen=True)
class AttachmentParams:
    kind: Literal["selection", "file", "symbol"]
    uri: str | None = None  # selection, file
    range: types.Range | None = None  # selection
    name: str = ""  # symbol


@camel_case
@dataclass(frozen=True)
class ChatParams:
    message: str
    session_id: str | None = None
    attachments: tuple[AttachmentParams, ...] = ()
    max_tokens: int | None = None


@camel_case
@dataclass(frozen=True)
class ChatCancelParams:
    session_id: str


@camel_case
@dataclass(frozen=True)
class ChatSessionsParams:
    action: Literal["list", "get", "delete"]
    session_id: str | None = None


@camel_case
@dataclass(frozen=True)
class ChatAboutArgument:
    action: Literal["explain", "fix", "tests"]
    uri: str
    range: types.Range


@camel_case
@dataclass(frozen=True)
class ApplyCodeBlockArgument:
    uri: str
    code: str
    range: types.Range


def params_of(value: Any, kind: type[T], method: str) -> T:
    """JSON params as their typed dataclass, or InvalidParams naming each field that is wrong."""
    try:
        return structure(_plain(value), kind, method, camel_names=True)
    except ConversionError as error:
        raise invalid(str(error)) from None


class ChatFeatures:
    """The chat service of one server, created on first use (it creates the sessions folder)."""

    def __init__(self, server):
        self.server = server  # lsp_server.server.FimbleServer
        self._service: ChatService | None = None

    @property
    def service(self) -> ChatService:
        if self._service is None:
            from fimble.chat.session import SessionStore

            self._service = ChatService(SessionStore(), self.server.backend)
        return self._service

    # --- from LSP to the service ----------------------------------------------------------------

    def workspace(self) -> ChatWorkspace:
        root = self.server.workspace.root_path
        context = self.server.workspace_context
        index = context.index if context is not None and context.ready.is_set() else None
        return ChatWorkspace(Path(root) if root and Path(root).is_dir() else None, index, self.buffer_text)

    def buffer_text(self, path: Path) -> str | None:
        """The open document's text (unsaved edits included), None when it is not open."""
        document = self.server.workspace.text_documents.get(from_fs_path(str(path)))
        return document.source if document is not None else None

    def holds_secrets(self, uri: str) -> bool:
        """Whether the document is a secret by its path or its (buffer's) text."""
        path = to_fs_path(uri) if uri.startswith("file:") else None
        text = self.buffer_text(Path(path)) if path else None
        return secret_reason(Path(path) if path else None, text or "") is not None

    def chat_request(self, raw: Any, workspace: ChatWorkspace) -> ChatRequest:
        params = params_of(raw, ChatParams, CHAT)
        if not params.message.strip():
            raise invalid(f"{CHAT} needs a non-empty \"message\"")
        if params.max_tokens is not None and params.max_tokens < 1:
            raise invalid(f"\"maxTokens\" must be a positive integer or null, got {params.max_tokens!r}")
        attachments = tuple(self.attachment_request(item, workspace) for item in params.attachments)
        return ChatRequest(params.message, params.session_id, attachments, params.max_tokens)

    def attachment_request(self, item: AttachmentParams, workspace: ChatWorkspace) -> AttachmentRequest:
        if item.kind == "symbol":
            if not item.name:
                raise invalid("a symbol attachment needs a \"name\"")
            return AttachmentRequest("symbol", name=item.name)
        path = _path_of(item.uri)
        if item.kind == "file":
            return AttachmentRequest("file", path=path)
        if item.range is None:
            raise invalid("a selection attachment needs a \"range\"")
        selection = _checked_range(item.range)
        text = self.buffer_text(path)
        if text is None:
            try:
                text = workspace.read(path)
            except ChatInputError as error:
                raise invalid(str(error)) from None
        document = TextDocument(from_fs_path(str(path)), text)
        selected = text[document.offset_at_position(selection.start) : document.offset_at_position(selection.end)]
        end_line = selection.end.line - 1 if selection.end.character == 0 and selection.end.line > selection.start.line else selection.end.line
        return AttachmentRequest("selection", path=path, start_line=selection.start.line, end_line=end_line, text=selected)

    # --- handlers ---------------------------------------------------------------------------------

    async def chat(self, params: Any) -> dict:
        workspace = self.workspace()
        request = self.chat_request(params, workspace)

        def send_chunk(chunk: ChatChunk) -> None:
            self.server.protocol.notify(CHAT_CHUNK, {"sessionId": chunk.session_id, "messageIndex": chunk.message_index, "text": chunk.text})

        try:
            answer = await self.service.ask(request, workspace, send_chunk)
        except ChatInputError as error:
            raise invalid(str(error)) from None
        except SessionSaveError as error:  # the question could not be stored: nothing was asked
            self.server.tell(f"Fimble: {error}")
            raise JsonRpcInternalError(f"Fimble: {error}") from None
        if answer.finish_reason == "error" or not answer.saved:
            self.server.tell(f"Fimble: {answer.notice}")
        return answer_to_wire(answer)

    def cancel(self, raw: Any) -> None:
        self.service.cancel(params_of(raw, ChatCancelParams, CHAT_CANCEL).session_id)

    def sessions(self, raw: Any) -> dict:
        params = params_of(raw, ChatSessionsParams, CHAT_SESSIONS)
        action = params.action
        try:
            if action == "list":
                listing = self.service.list_sessions()
                sessions = [{"id": s.id, "title": s.title, "updated": s.updated, "messages": len(s.messages)} for s in listing.sessions]
                return {"sessions": sessions, "problems": listing.problems}
            session_id = params.session_id
            if session_id is None:
                raise invalid(f"{CHAT_SESSIONS} {action!r} needs a string \"sessionId\"")
            if action == "get":
                session = self.service.get_session(session_id)
                messages = [{"role": m.role, "content": m.content, "finishReason": m.finish_reason} for m in session.messages]
                return {"id": session.id, "title": session.title, "messages": messages}
            return {"deleted": self.service.delete_session(session_id)}
        except ChatInputError as error:
            raise invalid(str(error)) from None

    def code_actions(self, params: types.CodeActionParams) -> list[types.CodeAction]:
        selection = params.range
        if selection.start == selection.end or self.holds_secrets(params.text_document.uri):
            return []  # a secret's selection would be refused as an attachment: offer nothing
        only = params.context.only
        where = {"uri": params.text_document.uri, "range": unstructure(selection)}
        actions = []
        for action, (title, kind, _) in ACTIONS.items():
            if only and not any(kind == wanted or kind.startswith(f"{wanted}.") for wanted in only):
                continue
            command = types.Command(title=title, command=CHAT_ABOUT_COMMAND, arguments=[{"action": action, **where}])
            actions.append(types.CodeAction(title=title, kind=kind, command=command))
        return actions

    def chat_about(self, raw: Any) -> None:
        argument = params_of(raw, ChatAboutArgument, CHAT_ABOUT_COMMAND)
        _path_of(argument.uri)
        attachment = {"kind": "selection", "uri": argument.uri, "range": unstructure(_checked_range(argument.range))}
        self.server.protocol.notify(OPEN_CHAT, {"prompt": ACTIONS[argument.action][2], "attachments": [attachment]})

    async def apply_code_block(self, raw: Any) -> dict:
        argument = params_of(raw, ApplyCodeBlockArgument, APPLY_CODE_BLOCK_COMMAND)
        uri, code, target = argument.uri, argument.code, _checked_range(argument.range)
        workspace_caps = self.server.client_capabilities.workspace
        if workspace_caps is None or not workspace_caps.apply_edit:
            return {"applied": False, "reason": "this editor does not accept edits from the server (workspace/applyEdit)"}
        edit = types.WorkspaceEdit(changes={uri: [types.TextEdit(range=target, new_text=code)]})
        result = await self.server.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label="Fimble: apply code block"))
        return {"applied": bool(result.applied), "reason": "" if result.applied else (result.failure_reason or "the editor declined the edit")}


def register_chat_features(server) -> ChatFeatures:
    features = ChatFeatures(server)

    @server.feature(CHAT)
    async def chat(ls, params):
        return await features.chat(params)

    @server.feature(CHAT_CANCEL)
    def chat_cancel(ls, params):
        features.cancel(params)

    @server.feature(CHAT_SESSIONS)
    def chat_sessions(ls, params):
        return features.sessions(params)

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix, types.CodeActionKind.Refactor]),
    )
    def code_action(ls, params: types.CodeActionParams):
        return features.code_actions(params)

    @server.command(CHAT_ABOUT_COMMAND)
    def chat_about(ls, *arguments):
        features.chat_about(_single(arguments, CHAT_ABOUT_COMMAND))

    @server.command(APPLY_CODE_BLOCK_COMMAND)
    async def apply_code_block(ls, *arguments):
        return await features.apply_code_block(_single(arguments, APPLY_CODE_BLOCK_COMMAND))

    return features


def answer_to_wire(answer: ChatAnswer) -> dict:
    return {
        "sessionId": answer.session_id,
        "messageIndex": answer.message_index,
        "text": answer.text,
        "finishReason": answer.finish_reason,
        "droppedTurns": answer.dropped_turns,
        "notice": answer.notice,
    }


# --- JSON params ------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON values as dicts and lists: pygls hands custom params over as named tuples."""
    if hasattr(value, "_asdict"):
        return {key: _plain(item) for key, item in value._asdict().items()}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _single(arguments: tuple, command: str) -> Any:
    if len(arguments) != 1:
        raise invalid(f"{command} takes one argument (an object), got {len(arguments)}")
    return arguments[0]


def _path_of(uri: Any) -> Path:
    if not isinstance(uri, str) or not uri.startswith("file:"):
        raise invalid(f"\"uri\" must be a file:// URI, got {uri!r}")
    path = to_fs_path(uri)
    if not path:
        raise invalid(f"\"uri\" {uri!r} names no file")
    return Path(path)


def _checked_range(value: types.Range) -> types.Range:
    start, end = value.start, value.end
    if min(start.line, start.character, end.line, end.character) < 0 or (end.line, end.character) < (start.line, start.character):
        raise invalid(f"\"range\" {unstructure(value)!r} is not a range (negative, or its end before its start)")
    return value
