"""`fimble lsp`: the language server each editor window starts (stdio).

Thin handlers over plain logic: a handler converts LSP params (UTF-16 positions included) into a
completion.service.CompletionRequest, awaits `complete`, and converts the answer back. Local models
live in the shared daemon, reached through models.daemon_client (started on demand, restarted when
it dies); a role whose source is a URL goes to that OpenAI-compatible server (models/remote.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
import itertools
import logging
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from fimble.completion.service import Completion, CompletionRequest, complete
from fimble.completion.syntax import indentation_after_enter
from fimble.completion.trigger import CompletionMode
from fimble.context.files import secret_reason
from fimble.lsp_server.acceptance import AcceptanceStats
from fimble.lsp_server.chat import register_chat_features
from fimble.lsp_server.debounce import AdaptiveDebounce
from fimble.lsp_server.jsonrpc import FimbleProtocol, serve_stdio
from fimble.lsp_server.settings import Settings, parse_settings
from fimble.lsp_server.status import STATUS, ServerStatus
from fimble.lsp_server.suggestions import Suggestions
from fimble.lsp_server.workspace_context import WorkspaceContext
from fimble.models.backend import DaemonBackend, RoutedBackend
from fimble.models.config import ConfigError, load_role_config
from fimble.models.daemon_client import DaemonClient
from fimble.models.generation import BackendError, BackendUnavailableError
from fimble.models.spec import Role, RoleConfig

log = logging.getLogger(__name__)

ACCEPTED_COMMAND = "fimble.accepted"
# The same problem is shown once per this many seconds, not on every keystroke.
MESSAGE_REPEAT_S = 30.0
# Acceptance statistics go to disk at most this often (and at shutdown).
STATS_SAVE_S = 10.0


@dataclass(frozen=True)
class ShownSuggestion:
    """The suggestion last shown on a document, to recognise a partial accept among its edits."""

    position: types.Position
    text: str
    language: str
    mode: str


class FimbleServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("fimble", "0.1.0", protocol_cls=FimbleProtocol)
        self.settings = Settings()
        self.client = DaemonClient(on_disconnect=self._on_daemon_lost)
        self.backend = RoutedBackend(_roles_for_routing(), DaemonBackend(self.client))
        self._in_flight: dict[str, asyncio.Task] = {}
        self._debounce: dict[str, AdaptiveDebounce] = {}
        self.suggestions = Suggestions(self._run_completion)
        self.acceptance = AcceptanceStats()
        self._stats_save: asyncio.TimerHandle | None = None
        self._shown_on: dict[str, ShownSuggestion] = {}
        self._shown: dict[str, float] = {}
        self._warned: set[str] = set()  # model warnings, shown once per server
        self.accepted = 0
        self.workspace_context: WorkspaceContext | None = None
        self._edit_sequence = itertools.count()
        self.status = ServerStatus()
        self._warm_ups = itertools.count(1)

    # --- plain helpers the handlers share -----------------------------------------------------------

    def apply_settings(self, raw) -> None:
        self.settings, warnings = parse_settings(raw, Settings())
        self.suggestions.clear()  # answers given under other settings
        self.suggestions.reuse = self.settings.cache_suggestions
        self.suggestions.max_latency_ms = self.settings.max_latency_ms or None
        for warning in warnings:
            self.tell(warning, types.MessageType.Warning)

    def tell(self, message: str, kind: types.MessageType = types.MessageType.Error) -> None:
        """Show a message in the editor, at most once per MESSAGE_REPEAT_S for the same text."""
        now = time.monotonic()
        if now - self._shown.get(message, -MESSAGE_REPEAT_S) < MESSAGE_REPEAT_S:
            return
        self._shown[message] = now
        log.warning("%s", message)
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def report(self, **changes) -> None:
        """Change the status the editor shows (fimble/status); sent only when it differs."""
        status = dataclasses.replace(self.status, **changes)
        if status != self.status:
            self.status = status
            self.protocol.notify(STATUS, status.to_wire())

    def model_failed(self, problem: object, kind: types.MessageType = types.MessageType.Error) -> None:
        """The daemon or the model failed: the user is told, and the status shows it until it is over."""
        self.tell(f"Fimble: {problem}", kind)
        self.report(model="error", problem=str(problem))

    def _on_daemon_lost(self, reason: str) -> None:
        self.backend.forget_models()
        self.model_failed(reason, types.MessageType.Warning)
        # A new daemon, with the completion model loaded, before the next keystroke needs it.
        asyncio.get_event_loop().create_task(self.warm_up())

    def supersede(self, uri: str) -> None:
        """A newer request on a document ends the older one: its answer is for a cursor that has
        moved. (The generation behind it goes on when the newer request can use it.)"""
        current = asyncio.current_task()
        previous = self._in_flight.get(uri)
        if previous is not None and previous is not current and not previous.done():
            previous.cancel()
        self._in_flight[uri] = current

    async def debounce(self, uri: str) -> None:
        delay = self._debounce.setdefault(uri, AdaptiveDebounce()).delay(time.monotonic(), self.settings.max_debounce_ms / 1000)
        if delay > 0:
            await asyncio.sleep(delay)

    async def complete_at(self, uri: str, position: types.Position, explicit: bool):
        """The completion at an LSP position, or None (nothing to show, or a problem told to the user)."""
        if not self.settings.enable:
            return None
        started_at = time.monotonic()
        self.supersede(uri)
        try:
            document = self.workspace.get_text_document(uri)
            request = CompletionRequest(document.source, document.offset_at_position(position), document.language_id or "", explicit)
            completion = await self.suggestions.answer(uri, request, started_at, lambda: self.debounce(uri))
            self.show_model_problems(completion)
            if completion.empty_because not in ("trigger", "model", "secret"):
                self.report(model="ready", problem="")  # the model answered, so an earlier problem is over
            if completion.text:
                self.suggestion_shown(uri, position, request, completion, started_at)
            return completion
        except BackendUnavailableError as error:
            self.model_failed(error, types.MessageType.Warning)
        except BackendError as error:
            self.model_failed(error)
        except (ValueError, OSError) as error:  # a document neither open nor readable, say
            log.info("no completion at %s %s: %s", uri, position, error)
        finally:
            if self._in_flight.get(uri) is asyncio.current_task():
                del self._in_flight[uri]
        return None

    def _run_completion(self, uri: str, request: CompletionRequest, on_draft, background: bool):
        path = self.workspace.get_text_document(uri).path
        if (reason := secret_reason(Path(path) if path else None, request.text)) is not None:
            return self.refuse_secret_document(uri, reason, request)
        context = self.context_source(path, request)
        return complete(request, self.settings.completion(), self.backend, context, on_draft, background)

    async def refuse_secret_document(self, uri: str, reason: str, request: CompletionRequest) -> Completion:
        """No completion in a document that holds secrets (`.env`, a key, a token pasted into code):
        its text would be the prompt. The log says why; the user is told when they asked."""
        log.info("no completion in %s (%s): nothing from it is sent to a model", uri, reason)
        if request.explicit:
            self.tell(f"Fimble: no completions in this file, which holds secrets ({reason}); nothing from it is sent to a model", types.MessageType.Info)
        return Completion("", CompletionMode.NONE, empty_because="secret")

    # --- typing into suggestions, accepting them, and what it tells the statistics ----------------

    def suggestion_shown(self, uri: str, position: types.Position, request: CompletionRequest, completion: Completion, started_at: float) -> None:
        mode = completion.mode.value
        self._shown_on[uri] = ShownSuggestion(position, completion.text, request.language_id, mode)
        if not completion.from_cache:  # a suggestion typed into and shown again counts once
            self.acceptance.shown(request.language_id, mode, (time.monotonic() - started_at) * 1000)
            self._save_stats_soon()

    def suggestion_accepted(self, record: dict) -> None:
        """The editor ran the item's command: the whole suggestion went in. Count it, and ask for
        the next suggestion, at the cursor after it, before the user types."""
        uri = record.get("uri")
        self._shown_on.pop(uri, None)
        language = self.workspace.get_text_document(uri).language_id if isinstance(uri, str) else ""
        self.acceptance.accepted(language or "", str(record.get("mode", "")))
        self._save_stats_soon()
        if self.settings.prefetch and self.settings.cache_suggestions:
            self.prefetch_after(record)

    def prefetch_after(self, record: dict) -> None:
        try:
            uri, text = record["uri"], record["text"]
            document = self.workspace.get_text_document(uri)
            start = document.offset_at_position(types.Position(line=record["line"], character=record["character"]))
        except (KeyError, TypeError, ValueError, OSError):
            return  # a record from an older client, or a document closed since
        end = start + len(text)
        if document.source[start:end] != text:
            return  # the text did not go in where it was shown (the user edited first)
        request = next_cursor_after_accept(document.source, end, document.language_id or "")
        self.suggestions.prefetch(uri, request, time.monotonic())

    def edits_arrived(self, uri: str, changes) -> None:
        """An edit that inserts, where a suggestion was shown, a proper start of it longer than a
        keystroke is a partial accept (a word or a line of it, taken by the editor's command)."""
        shown = self._shown_on.get(uri)
        if shown is None:
            return
        for change in changes:
            span = getattr(change, "range", None)
            if span is None or span.start != span.end or span.start != shown.position:
                continue
            if 1 < len(change.text) < len(shown.text) and shown.text.startswith(change.text):
                self.acceptance.accepted(shown.language, shown.mode, partly=True)
                self._save_stats_soon()
        self._shown_on.pop(uri, None)

    def _save_stats_soon(self) -> None:
        if self._stats_save is None:
            self._stats_save = asyncio.get_running_loop().call_later(STATS_SAVE_S, self.save_stats)

    def save_stats(self) -> None:
        self._stats_save = None
        self.acceptance.save()

    def show_model_problems(self, completion: Completion) -> None:
        """Tell the user about a model that failed, and (once) about a model that does not fit."""
        if completion.empty_because == "model":
            self.model_failed(completion.error)
        for warning in completion.warnings:
            if warning not in self._warned:
                self._warned.add(warning)
                self.tell(f"Fimble: {warning}", types.MessageType.Warning)

    def context_source(self, path: str | None, request: CompletionRequest):
        context = self._context_holding(path)
        return context.context_source(Path(path), request.prefix, request.suffix) if context else None

    def _context_holding(self, path: str | None) -> WorkspaceContext | None:
        """The workspace context, when `path` (a document's file path) lies in its workspace."""
        context = self.workspace_context
        return context if context is not None and path and context.contains(Path(path)) else None

    async def index_workspace(self) -> None:
        """Build the workspace index in a worker thread, with progress shown in the editor."""
        root = self.workspace.root_path
        if not root or not Path(root).is_dir():
            return
        self.workspace_context = WorkspaceContext(Path(root))
        token = "fimble-index"
        progress = self.client_capabilities.window and self.client_capabilities.window.work_done_progress
        loop = asyncio.get_running_loop()

        def report(done: int, total: int) -> None:
            if progress:
                value = types.WorkDoneProgressReport(message=f"{done}/{total} files", percentage=100 * done // max(total, 1))
                loop.call_soon_threadsafe(self.work_done_progress.report, token, value)

        if progress:
            await self.work_done_progress.create_async(token)
            self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="Fimble: indexing", percentage=0))
        self.report(index="indexing")
        try:
            outcome = await asyncio.to_thread(self.workspace_context.build, report)
            message = f"{outcome.files} files ({outcome.parsed} parsed, {outcome.reused} unchanged) in {outcome.seconds:.1f} s"
            self.report(index="ready")
        except Exception as error:  # indexing is a help, never a reason to stop completing
            log.exception("indexing %s failed", root)
            message = f"indexing failed: {error}"
            self.report(index="failed")
        if progress:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))

    def document_changed(self, uri: str) -> None:
        document = self.workspace.get_text_document(uri)
        if context := self._context_holding(document.path):
            sequence = next(self._edit_sequence)
            asyncio.get_running_loop().run_in_executor(None, context.document_changed, Path(document.path), document.source, sequence)

    def document_closed(self, uri: str) -> None:
        path = self.workspace.get_text_document(uri).path
        if context := self._context_holding(path):
            asyncio.get_running_loop().run_in_executor(None, context.document_closed, Path(path), next(self._edit_sequence))

    async def warm_up(self) -> None:
        """Start the daemon and load the completion model, with progress shown in the editor. Runs
        at start and after the daemon died, perhaps while an earlier run is still ending: each
        run's progress has a token of its own."""
        token = f"fimble-warm-up-{next(self._warm_ups)}"
        progress = self.client_capabilities.window and self.client_capabilities.window.work_done_progress
        try:
            if progress:
                await self.work_done_progress.create_async(token)
                self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="Fimble", message="loading the completion model"))
            self.report(model="loading", problem="")
            await self.backend.model(Role.SINGLE_LINE)
            self.report(model="ready", problem="")
        except BackendError as error:
            self.model_failed(error)
        finally:
            if progress:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="ready"))


def next_cursor_after_accept(source: str, end: int, language_id: str) -> CompletionRequest:
    """Where the user goes after accepting text that ends at `end`: on along the line, or, when the
    accepted text finished its line, to the next line, as Enter (with the editor's indentation)
    leaves it. At a line's end the model has nothing to add; on the next line it does."""
    line_end = source.find("\n", end)
    rest_of_line = source[end:] if line_end == -1 else source[end:line_end]
    if rest_of_line.strip():
        return CompletionRequest(source, end, language_id)
    line = source[source.rfind("\n", 0, end) + 1 : end]
    enter = "\n" + indentation_after_enter(line, language_id)
    return CompletionRequest(source[:end] + enter + source[end:], end + len(enter), language_id)


def _roles_for_routing() -> RoleConfig:
    """Which roles go to a remote server. A config that does not parse sends every role to the
    daemon, which reports the error on each request, so the editor shows it."""
    try:
        return load_role_config()
    except ConfigError:
        return RoleConfig()


server = FimbleServer()


@server.feature(types.INITIALIZE)
def initialize(ls: FimbleServer, params: types.InitializeParams) -> None:
    ls.apply_settings(params.initialization_options)


@server.feature(types.INITIALIZED)
def initialized(ls: FimbleServer, params: types.InitializedParams) -> None:
    asyncio.get_event_loop().create_task(ls.warm_up())
    asyncio.get_event_loop().create_task(ls.index_workspace())


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: FimbleServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.document_changed(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: FimbleServer, params: types.DidChangeTextDocumentParams) -> None:
    ls.edits_arrived(params.text_document.uri, params.content_changes)
    ls.document_changed(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: FimbleServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.suggestions.forget(params.text_document.uri)
    ls.document_closed(params.text_document.uri)


@server.feature(types.SHUTDOWN)
async def shutdown(ls: FimbleServer, params) -> None:
    for task in ls._in_flight.values():
        task.cancel()
    ls.suggestions.clear()
    ls.save_stats()
    if ls.workspace_context is not None:
        ls.workspace_context.stop()
    await ls.backend.close()
    await ls.client.close()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def did_change_configuration(ls: FimbleServer, params: types.DidChangeConfigurationParams) -> None:
    ls.apply_settings(params.settings)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: FimbleServer, params: types.InlineCompletionParams):
    explicit = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    completion = await ls.complete_at(params.text_document.uri, params.position, explicit)
    if completion is None or not completion.text:
        return types.InlineCompletionList(items=[])
    here = types.Range(start=params.position, end=params.position)
    items = [
        types.InlineCompletionItem(insert_text=text, range=here, command=accepted_command(completion, params.text_document.uri, params.position, text))
        for text in (completion.text, *completion.alternatives)
    ]
    return types.InlineCompletionList(items=items)


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
async def completion_fallback(ls: FimbleServer, params: types.CompletionParams):
    """For clients without inline completion: the same text as one completion item. Clients that
    have inline completion get nothing here, so they don't show the suggestion twice."""
    document_caps = ls.client_capabilities.text_document
    if document_caps is not None and document_caps.inline_completion is not None:
        return types.CompletionList(is_incomplete=True, items=[])
    explicit = params.context is not None and params.context.trigger_kind == types.CompletionTriggerKind.Invoked
    completion = await ls.complete_at(params.text_document.uri, params.position, explicit)
    if completion is None or not completion.text:
        return types.CompletionList(is_incomplete=True, items=[])
    here = types.Range(start=params.position, end=params.position)
    items = []
    for rank, text in enumerate((completion.text, *completion.alternatives)):
        items.append(types.CompletionItem(
            label=(text.strip().splitlines() or [text])[0][:60],
            kind=types.CompletionItemKind.Text,
            detail="Fimble",
            text_edit=types.TextEdit(range=here, new_text=text),
            # Clients filter items by the word before the cursor; the completion continues it.
            filter_text=text,
            sort_text=str(rank),
            command=accepted_command(completion, params.text_document.uri, params.position, text),
        ))
    return types.CompletionList(is_incomplete=True, items=items)


@server.command(ACCEPTED_COMMAND)
def accepted(ls: FimbleServer, *args) -> None:
    ls.accepted += 1
    if args and isinstance(args[0], dict):
        ls.suggestion_accepted(args[0])


def accepted_command(completion: Completion, uri: str, position: types.Position, text: str) -> types.Command:
    """The command an item runs when the user accepts it; `text` is that item's candidate."""
    return types.Command(title="Fimble: accepted", command=ACCEPTED_COMMAND, arguments=[acceptance_record(completion, uri, position, text)])


def acceptance_record(completion: Completion, uri: str, position: types.Position, text: str) -> dict:
    """What the editor hands back when the user accepts: where and what was accepted (for the
    prefetch and the acceptance statistics), read also by benchmarks/humaneval_infill.py for the
    abstain trade-off. `text` is the accepted candidate's."""
    return {
        "mode": completion.mode.value,
        "meanLogprob": completion.mean_logprob,
        "contextFiles": list(completion.context_files),
        "uri": uri,
        "line": position.line,
        "character": position.character,
        "text": text,
        "fromCache": completion.from_cache,
    }


# fimble/chat, fimble/chatCancel, fimble/chatSessions, chat code actions and commands.
chat_features = register_chat_features(server)


def run_stdio() -> int:
    serve_stdio(server)
    return 0
