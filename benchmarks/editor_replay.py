"""An editor replaying typing through a real `fimble lsp`, keeping every request it sends and what
became of it; shared by the load and soak benchmarks (benchmarks/load_editors.py, benchmarks/soak.py).

The typed text is a real third-party file from an installed package (FILES; their versions are
recorded with the results). The document opens with the file's first lines, and the editor types
on from there at the end of the document, a character a keystroke; Enter brings the next line's
indentation with it, as editors do. Each keystroke asks for an inline completion and, as VS Code
does, cancels the request before it with $/cancelRequest.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lsprotocol import types
from pygls.lsp.client import LanguageClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lsp_text import utf16_length  # noqa: E402
from benchmarks.typing_session import start_client  # noqa: E402
from fimble.models.daemon_client import DaemonClient  # noqa: E402

# (distribution, package, file): eight real files, one per editor in the load benchmark.
FILES = (
    ("pathspec", "pathspec", "pattern.py"),
    ("platformdirs", "platformdirs", "unix.py"),
    ("requests", "requests", "sessions.py"),
    ("click", "click", "core.py"),
    ("httpx", "httpx", "_client.py"),
    ("Jinja2", "jinja2", "environment.py"),
    ("urllib3", "urllib3", "connectionpool.py"),
    ("packaging", "packaging", "version.py"),
)
# The document opens with this many of the file's lines: a prompt of a realistic size from the start.
OPENING_LINES = 40
# Every request sees the model: no suggestion cache, no prefetch, no draft cut short by the latency
# budget, and no abstaining, so each answered request is one generation and every answer is shown.
MODEL_EVERY_KEYSTROKE = {"cacheSuggestions": False, "prefetch": False, "maxLatencyMs": 0, "abstainBelowLogprob": None}
REQUEST_CANCELLED = -32800

Outcome = Literal["text", "empty", "cancelled", "error", "hanging"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def file_lines(package: str, name: str) -> list[str]:
    origin = importlib.util.find_spec(package).origin
    return (Path(origin).parent / name).read_text().splitlines()


def file_versions() -> dict[str, str]:
    return {f"{package}/{name}": importlib.metadata.version(distribution) for distribution, package, name in FILES}


@dataclass
class Sent:
    """One request and, once it is over, its answer."""

    kind: str  # "completion" or "chat"
    request_id: str
    sent_at: float
    future: asyncio.Future
    phase: str = ""
    measured: bool = False  # the editor waited for this one (its latency counts)
    answered_at: float | None = None

    def answered(self, future: asyncio.Future) -> None:
        self.answered_at = time.monotonic()
        if not future.cancelled():
            future.exception()  # looked at here, so asyncio does not log every cancelled request

    @property
    def latency_s(self) -> float | None:
        return self.answered_at - self.sent_at if self.answered_at is not None else None

    def outcome(self) -> Outcome:
        future = self.future
        if not future.done():
            return "hanging"
        if future.cancelled():
            return "cancelled"
        error = future.exception()
        if error is not None:
            return "cancelled" if getattr(error, "CODE", None) == REQUEST_CANCELLED else "error"
        if self.kind == "chat":
            return "text" if getattr(future.result(), "text", "") else "empty"  # pygls gives a named tuple
        result = future.result()
        items = result.items if result is not None else []
        return "text" if items and items[0].insert_text else "empty"


@dataclass
class Ledger:
    """Every request an editor sent, in order."""

    sent: list[Sent] = field(default_factory=list)

    def send(self, client: LanguageClient, kind: str, method: str, params: Any, phase: str) -> Sent:
        request_id = str(uuid.uuid4())
        future = asyncio.wrap_future(client.protocol.send_request(method, params, msg_id=request_id))
        entry = Sent(kind, request_id, time.monotonic(), future, phase)
        future.add_done_callback(entry.answered)
        self.sent.append(entry)
        return entry

    def outstanding(self) -> list[Sent]:
        return [entry for entry in self.sent if not entry.future.done()]

    async def settle(self, timeout_s: float) -> None:
        """Wait for every request to be answered; those still open afterwards count as hanging."""
        pending = [entry.future for entry in self.outstanding()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)


class Editor:
    """One document typed through one `fimble lsp`."""

    def __init__(self, client: LanguageClient, uri: str, lines: list[str], ledger: Ledger):
        self.client, self.uri, self.lines, self.ledger = client, uri, lines, ledger
        self.text = ""
        self.version = 0
        self.last: Sent | None = None
        self._next_line = OPENING_LINES

    def open(self) -> None:
        """Open (or reopen, once the file is typed out) the document with the file's first lines."""
        if self.version:
            self.client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=self.uri)))
        self.text = "\n".join(self.lines[:OPENING_LINES])
        self.version += 1
        self._next_line = OPENING_LINES
        item = types.TextDocumentItem(uri=self.uri, language_id="python", version=self.version, text=self.text)
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=item))

    def keystrokes(self):
        """The file's next keystrokes, forever: Enter with the next line's indentation, then the
        line's characters; the document starts over when the file is typed out."""
        while True:
            if self._next_line >= len(self.lines):
                self.open()
            line = self.lines[self._next_line]
            self._next_line += 1
            body = line.lstrip(" ")
            yield "\n" + line[: len(line) - len(body)]
            yield from body

    @property
    def cursor(self) -> types.Position:
        line_start = self.text.rfind("\n") + 1
        return types.Position(line=self.text.count("\n"), character=utf16_length(self.text[line_start:]))

    def type(self, text: str) -> None:
        here = self.cursor
        self.text += text
        self.version += 1
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
                content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=here, end=here), text=text)],
            )
        )

    def request_completion(self, phase: str, cancel_previous: bool = True) -> Sent:
        """Ask at the cursor. With `cancel_previous` the request before is cancelled first, as VS Code
        does; without, the server supersedes it on its own when the new request arrives."""
        if cancel_previous and self.last is not None and not self.last.future.done():
            self.cancel(self.last)
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=self.uri),
            position=self.cursor,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        self.last = self.ledger.send(self.client, "completion", types.TEXT_DOCUMENT_INLINE_COMPLETION, params, phase)
        return self.last

    def cancel(self, entry: Sent) -> None:
        self.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=entry.request_id))

    def chat_about_opening(self, phase: str, max_tokens: int, session_id: str | None = None) -> Sent:
        """A fimble/chat question about the file's opening lines, attached as a selection."""
        end = types.Position(line=OPENING_LINES - 1, character=0)
        params = {
            "message": "Explain what this code does, and point out anything that looks wrong.",
            "sessionId": session_id,
            "attachments": [{"kind": "selection", "uri": self.uri, "range": {"start": {"line": 0, "character": 0}, "end": {"line": end.line, "character": 0}}}],
            "maxTokens": max_tokens,
        }
        return self.ledger.send(self.client, "chat", "fimble/chat", params, phase)


async def start_editor(settings: dict, env: dict) -> LanguageClient:
    client = await start_client(settings, env)

    # The server's notifications need no handling here; handled, pygls logs nothing for them.
    for method in ("fimble/chatChunk", "fimble/status", types.PROGRESS):
        client.feature(method)(lambda params: None)

    return client


async def stop_editor(client: LanguageClient) -> None:
    try:
        await asyncio.wait_for(client.shutdown_async(None), timeout=30)
        client.exit(None)
    finally:
        await client.stop()


def daemon_env(root: Path, config: Path | None) -> dict[str, str]:
    """The environment of a daemon of the benchmark's own (its runtime dir under `root`), with the
    given config, or none: every role is then the embedded model."""
    env = dict(os.environ, FIMBLE_RUNTIME_DIR=str(root), FIMBLE_DATA_DIR=str(root / "data"))
    env["FIMBLE_CONFIG"] = str(config) if config is not None else str(root / "none.toml")
    return env


async def wait_until_loaded(daemon: DaemonClient, timeout_s: float = 900) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await daemon.connect()
            status = await daemon.status()
            if status["roles"]["single_line"]["state"] == "ready":
                return status
        except (OSError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the model did not load within {timeout_s:.0f} s")
        await asyncio.sleep(1)


def engines_of(status: dict) -> dict[str, dict]:
    """The daemon's loaded engines by the roles they serve ("single_line+multi_line+chat"): roles
    with equal specs share one engine, whose figures each of them repeats."""
    by_spec: dict[str, tuple[list[str], dict]] = {}
    for name, role in status["roles"].items():
        if role["state"] == "ready":
            by_spec.setdefault(repr(sorted(role["spec"].items())), ([], role))[0].append(name)
    return {"+".join(names): role for names, role in by_spec.values()}


async def wait_until_idle(daemon: DaemonClient, timeout_s: float) -> dict:
    """The daemon's status once nothing runs (every request map empty), or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await daemon.status()
        busy = status["connection_handles"] or any(
            any(engine["request_maps"].values()) or engine["cache"]["blocks_in_use"] for engine in engines_of(status).values()
        )
        if not busy or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.5)


def stop_daemon(env: dict) -> None:
    subprocess.run([sys.executable, "-m", "fimble", "daemon", "stop"], env=env, capture_output=True, timeout=60)


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
