"""A real VS Code for the tests: code-server on 127.0.0.1 with the built extension, Debian's
Chromium showing its workbench, and playwright-core (browser.js) pressing the keys, plus what the
tests read back: the page, the files on disk, and the LSP messages that the extension's client
logs (with `fimble.trace.server` on) into the "Fimble" output channel.

Every process runs in a process group of its own and is stopped by group: stopping only
code-server's main process would leave its file watchers, the extension host and `fimble lsp`
running. code-server's user data, extensions and logs live in a temporary folder.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tests.e2e.vscode.install import Installed

BROWSER_JS = Path(__file__).with_name("browser.js")
START_TIMEOUT_S = 60
# The webview of the chat panel: VS Code's outer frame, and the page's own frame inside it.
CHAT_FRAMES = ["iframe.webview", "iframe#active-frame"]


class WorkbenchError(AssertionError):
    """Something the workbench did not show or do in time; the message says what."""


# --- process groups ---------------------------------------------------------------------------


def start_group(command: list[str], log: Path, env: dict[str, str], cwd: Path | None = None, **pipes) -> subprocess.Popen:
    """A process that leads a new process group, its output in `log` unless piped."""
    with open(log, "ab") as output:
        pipes.setdefault("stdout", output)
        pipes.setdefault("stderr", output)
        return subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True, stdin=pipes.pop("stdin", subprocess.DEVNULL), **pipes)


def stop_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to the whole group, then SIGKILL to what is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        if not group_alive(process.pid):
            return


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    """The first true value of `predicate()`, or WorkbenchError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WorkbenchError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- code-server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeServer:
    url: str
    user_data: Path
    workspace: Path

    def extension_output(self) -> str:
        """What the extension wrote to its "Fimble" output channel: VS Code keeps each channel in
        a file under the window's logs."""
        logs = sorted(self.user_data.glob("logs/*/exthost*/output_logging_*/*-Fimble.log"))
        return "".join(log.read_text(errors="replace") for log in logs)


@contextmanager
def code_server(installed: Installed, extension: Path, workspace: Path, settings: dict[str, Any], env: dict[str, str], root: Path) -> Iterator[CodeServer]:
    """code-server serving `workspace` with `extension` installed and `settings` as the user's."""
    user_data = root / "code-server"
    (user_data / "User").mkdir(parents=True)
    extensions = user_data / "extensions"
    extensions.mkdir()
    manifest = json.loads((extension / "package.json").read_text())
    (extensions / f"{manifest['publisher']}.{manifest['name']}-{manifest['version']}").symlink_to(extension)
    server = CodeServer(f"http://127.0.0.1:{free_port()}", user_data, workspace)
    # Read at start only: code-server does not follow changes made to the file behind its back.
    (user_data / "User" / "settings.json").write_text(json.dumps(settings, indent=2))
    # code-server reads and writes its own config and state under XDG_CONFIG_HOME/XDG_DATA_HOME.
    env = dict(env, XDG_CONFIG_HOME=str(root / "xdg-config"), XDG_DATA_HOME=str(root / "xdg-data"))
    command = [
        "node", str(installed.code_server), "--bind-addr", server.url.removeprefix("http://"), "--auth", "none",
        "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override",
        "--user-data-dir", str(user_data), "--extensions-dir", str(extensions), str(workspace),
    ]
    process = start_group(command, root / "code-server.log", env)
    try:
        wait_until(lambda: healthy(server.url) or process.poll() is not None, START_TIMEOUT_S, "code-server /healthz")
        if process.poll() is not None:
            raise WorkbenchError(f"code-server exited ({process.returncode}):\n{(root / 'code-server.log').read_text()[-3000:]}")
        yield server
    finally:
        stop_group(process)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- Chromium and the page ----------------------------------------------------------------------


@contextmanager
def chromium(installed: Installed, root: Path) -> Iterator[str]:
    """Headless Chromium with a profile of its own; yields its DevTools endpoint."""
    profile = root / "chromium"
    command = [
        str(installed.chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
        f"--user-data-dir={profile}", "about:blank",
    ]
    # Chromium puts files of its own in TMPDIR, outside the profile, and leaves them there.
    scratch = root / "chromium-tmp"
    scratch.mkdir()
    process = start_group(command, root / "chromium.log", dict(os.environ, TMPDIR=str(scratch)))
    try:
        # Chromium writes the port it chose, then the browser's path, into DevToolsActivePort.
        port_file = profile / "DevToolsActivePort"
        wait_until(lambda: port_file.is_file() and len(port_file.read_text().split()) >= 2, START_TIMEOUT_S, "Chromium's DevTools port")
        yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"
    finally:
        stop_group(process)


class Page:
    """The page in Chromium, acted on through browser.js: one call per action, answered in order.
    `frames` (CSS selectors of iframes, outermost first) reaches into a webview."""

    def __init__(self, installed: Installed, devtools: str, root: Path):
        self._log = root / "browser.log"
        self._process = start_group(
            ["node", str(BROWSER_JS), str(installed.playwright_core), devtools], self._log, dict(os.environ),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_replies, daemon=True).start()
        self._ids = iter(range(1, 1 << 30))
        self._answer(0, START_TIMEOUT_S)

    def _read_replies(self) -> None:
        for line in self._process.stdout:
            self._replies.put(json.loads(line))
        self._replies.put(None)

    def _answer(self, request_id: int, timeout_s: float):
        try:
            reply = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise WorkbenchError(f"browser.js did not answer within {timeout_s:.0f} s") from None
        if reply is None:
            raise WorkbenchError(f"browser.js exited:\n{self._log.read_text()[-3000:]}")
        assert reply["id"] == request_id, reply
        if not reply["ok"]:
            raise WorkbenchError(reply["error"])
        return reply["value"]

    def call(self, op: str, timeout_s: float = 30, **args):
        request_id = next(self._ids)
        self._process.stdin.write((json.dumps({"id": request_id, "op": op, "timeout_ms": int(timeout_s * 1000), **args}) + "\n").encode())
        self._process.stdin.flush()
        return self._answer(request_id, timeout_s + 10)

    def wait(self, selector: str, timeout_s: float = 30, state: str = "visible", frames: list[str] | None = None) -> None:
        self.call("wait", selector=selector, state=state, frames=frames or [], timeout_s=timeout_s)

    def click(self, selector: str, frames: list[str] | None = None) -> None:
        self.call("click", selector=selector, frames=frames or [])

    def text(self, selector: str, frames: list[str] | None = None) -> str:
        return self.call("text", selector=selector, frames=frames or [])

    def count(self, selector: str, frames: list[str] | None = None) -> int:
        return self.call("count", selector=selector, frames=frames or [])

    def press(self, keys: str) -> None:
        self.call("press", keys=keys)

    def type(self, text: str) -> None:
        self.call("type", text=text)

    def idle(self, timeout_s: float) -> None:
        """Returns in the page's next idle period (requestIdleCallback), or after `timeout_s`."""
        self.call("idle", timeout_s=timeout_s)

    def screenshot(self, path: Path) -> None:
        self.call("screenshot", path=str(path))

    def close(self) -> None:
        try:
            self.call("close", timeout_s=5)
        except (WorkbenchError, OSError):
            pass
        stop_group(self._process)


# --- the workbench ------------------------------------------------------------------------------

QUICK_INPUT = ".quick-input-widget .quick-input-box input"
GHOST_TEXT = ".ghost-text-decoration"  # the suggestion's part on the cursor line
# Its lines below the cursor line: a view zone whose lines hold spans of class ghost-text.
GHOST_LINES = ".view-zones > div:has(.ghost-text) .view-line"
EXTENSION_STATUS = ".statusbar-item[aria-label^='Fimble: ']"
TOASTS = ".notifications-toasts .notification-list-item-message"
DIRTY_TAB = ".tab.active.dirty"
# Ctrl+S saves a test's small file in under a second here; 10 s leaves room for a slow machine.
SAVE_KEY_TIMEOUT_S = 10
# The latest that VS Code makes an editor's "Eventually" contributions (inline suggestions among them).
EDITOR_CONTRIBUTIONS_DEADLINE_S = 5
# A setting typed into the Settings editor: how long VS Code gets to write it, and how many tries.
SETTING_WRITE_S = 4
SETTING_ATTEMPTS = 3


class Workbench:
    """VS Code's workbench in the page, used the way a user does: keys, the command palette, clicks."""

    def __init__(self, page: Page, server: CodeServer):
        self.page = page
        self.server = server

    def load(self) -> None:
        self.page.call("viewport", width=1400, height=860)
        self.page.call("goto", url=f"{self.server.url}/?folder={self.server.workspace}", timeout_s=START_TIMEOUT_S)
        self.page.wait(".monaco-workbench", timeout_s=START_TIMEOUT_S)

    def wait_for_status(self, word: str, timeout_s: float = 60) -> None:
        """The extension's status bar item says `word` (starting, loading, indexing, ready, error)."""
        self.page.wait(f".statusbar-item[aria-label='Fimble: {word}']", timeout_s=timeout_s)

    def run_command(self, title: str) -> None:
        """A command by its title in the command palette (Ctrl+Shift+P)."""
        self.page.press("Control+Shift+P")
        self.page.wait(QUICK_INPUT)
        self.page.type(title)
        self.page.wait(f".quick-input-list .monaco-list-row.focused:has-text('{title}')")
        self.page.press("Enter")

    def set_setting(self, key: str, value: bool | int) -> None:
        """A setting changed in the Settings editor (a checkbox, or a number typed in its box),
        which is closed once VS Code has written the user's settings.json (where a value equal to
        the default is left out)."""
        settings = self.server.user_data / "User" / "settings.json"
        before = settings.stat().st_mtime_ns

        def written() -> bool:
            try:
                return settings.stat().st_mtime_ns != before and json.loads(settings.read_text()).get(key, value) == value
            except json.JSONDecodeError:  # read halfway through VS Code's write
                return False

        self.run_command("Preferences: Open Settings (UI)")
        self.page.wait(".settings-editor .suggest-input-container")
        # The search box keeps the last search: select it so that the new one replaces it. "@id:"
        # lists that one setting, where a plain search also lists its neighbours (fimble.max…).
        self.page.press("Control+A")
        self.page.type(f"@id:{key}")
        # The list re-renders when a search settles, and a box re-rendered under the keys typed
        # into it drops them, so the value is entered again until VS Code has written it.
        for attempt in range(1, SETTING_ATTEMPTS + 1):
            self._enter_setting(key, value)
            try:
                wait_until(written, SETTING_WRITE_S, f"{key} = {value} written to settings.json")
                break
            except WorkbenchError as error:
                if attempt == SETTING_ATTEMPTS:
                    raise WorkbenchError(f"{error}, after {attempt} tries") from None
        self.page.press("Control+W")
        self.page.wait(".settings-editor", state="detached")

    def _enter_setting(self, key: str, value: bool | int) -> None:
        if isinstance(value, bool):
            checkbox = f".settings-editor [role=checkbox][aria-label='{key}']"
            self.page.wait(checkbox)
            if self.page.count(f"{checkbox}[aria-checked='{str(value).lower()}']") == 0:
                self.page.click(checkbox)
        else:
            self.page.click(f".settings-editor input[aria-label='{key}']")
            self.page.press("Control+A")
            self.page.type(str(value))

    def close_all_editors(self) -> None:
        self.run_command("View: Close All Editors")
        self.page.wait(".editor-group-container .tab", state="detached")

    def open_file(self, name: str) -> None:
        """Quick Open (Ctrl+P) in the first editor group, so that the chat beside it stays visible."""
        self.page.press("Control+1")
        self.page.press("Control+P")
        self.page.wait(QUICK_INPUT)
        self.page.type(name)
        self.page.wait(f".quick-input-list .monaco-list-row.focused:has-text('{name}')")
        self.page.press("Enter")
        self.page.wait(f".tab.active[aria-label*='{name}']")
        # A new editor makes its inline-suggestion controller when the window is first idle, or 5 s
        # later at most (VS Code's EditorContributionInstantiation.Eventually): keys typed before
        # that ask for no inline completion. An idle callback asked for now runs after VS Code's.
        self.page.idle(timeout_s=EDITOR_CONTRIBUTIONS_DEADLINE_S + 1)

    def go_to(self, line: int, column: int = 1) -> None:
        """Ctrl+G to a 1-based line and column. Returns once the cursor is there: keys typed while
        the Go to Line box is still closing would not trigger a suggestion."""
        self.page.press("Control+G")
        self.page.wait(QUICK_INPUT)
        self.page.type(f"{line}:{column}")
        self.page.press("Enter")
        self.page.wait(f".statusbar-item[aria-label='Ln {line}, Col {column}']")

    def select_lines(self, first: int, last: int) -> None:
        """Whole lines, as Shift+Down selects them: the selection ends at the start of the next line."""
        self.go_to(first)
        for _ in range(last - first + 1):
            self.page.press("Shift+ArrowDown")

    def ghost_text(self, timeout_s: float = 30) -> str:
        """The inline suggestion as shown: its rest of the cursor line, then its lines below."""
        self.page.wait(f"{GHOST_TEXT}, .ghost-text", timeout_s=timeout_s)
        on_cursor_line = "".join(self.page.call("texts", selector=GHOST_TEXT))
        return as_typed("\n".join([on_cursor_line, *self.page.call("texts", selector=GHOST_LINES)]))

    def save(self) -> None:
        """Ctrl+S in the focused editor, done once its tab is no longer dirty. Should the key not
        save in SAVE_KEY_TIMEOUT_S, what the page showed then is given as a warning and the key
        is pressed once more (a failed test's report says what the page showed then)."""
        self.page.press("Control+S")
        try:
            self.page.wait(DIRTY_TAB, state="detached", timeout_s=SAVE_KEY_TIMEOUT_S)
            return
        except WorkbenchError as error:
            first_line = str(error).splitlines()[0]
            warnings.warn(f"Ctrl+S did not save in {SAVE_KEY_TIMEOUT_S} s ({first_line}); {self.describe()}", stacklevel=2)
        self.page.press("Control+S")
        self.page.wait(DIRTY_TAB, state="detached")

    def describe(self) -> str:
        """The focused element, the active tabs and the notifications shown, for a failure's report."""
        tabs = self.page.call("texts", selector=".tab.active")
        return f"focus: {self.page.call('focused')}; active tabs: {tabs}; notifications: {self.page.call('texts', selector=TOASTS)}"

    def wait_for_toast(self, containing: str, timeout_s: float = 30) -> str:
        selector = f"{TOASTS}:has-text('{containing}')"
        self.page.wait(selector, timeout_s=timeout_s)
        return self.page.text(selector)

    def output_panel_top(self) -> str:
        """The first lines of the output channel shown in the panel (Ctrl+Home in it)."""
        self.page.wait(".part.panel .monaco-editor .view-lines")
        self.page.click(".part.panel .monaco-editor")
        self.page.press("Control+Home")
        self.page.wait(".part.panel .monaco-editor .view-line:has-text('Starting')")
        return as_typed(self.page.text(".part.panel .monaco-editor .view-lines"))

    def shown_output_channel(self) -> str:
        return self.page.call("value", selector=".part.panel select.monaco-select-box")


def as_typed(shown: str) -> str:
    """Text from an editor as it is in the document: Monaco draws spaces as U+00A0."""
    return shown.replace("\u00a0", " ")


class ChatView:
    """The chat panel's page (media/chat.js) inside its webview."""

    def __init__(self, page: Page):
        self.page = page

    def wait(self, selector: str, timeout_s: float = 30, state: str = "visible") -> None:
        self.page.wait(selector, timeout_s=timeout_s, state=state, frames=CHAT_FRAMES)

    def text(self, selector: str) -> str:
        return self.page.text(selector, frames=CHAT_FRAMES)

    def count(self, selector: str) -> int:
        return self.page.count(selector, frames=CHAT_FRAMES)

    def click(self, selector: str) -> None:
        self.page.click(selector, frames=CHAT_FRAMES)

    def ask(self, question: str) -> None:
        self.click("#input")
        self.page.type(question)
        self.page.press("Enter")
        self.wait(f".turn.user:has-text('{question}')")

    def streaming_text(self) -> str:
        """The answer being written, as far as it is shown; "" once it has ended."""
        return "".join(self.page.call("texts", selector=".turn.assistant .body.streaming", frames=CHAT_FRAMES))

    def answer_text(self) -> str:
        """The answers shown, written or still being written."""
        return "".join(self.page.call("texts", selector=".turn.assistant .body", frames=CHAT_FRAMES))

    def wait_for_answer_end(self, timeout_s: float = 120) -> str:
        self.wait(".turn.assistant:last-of-type .body.streaming", state="detached", timeout_s=timeout_s)
        return self.text(".turn.assistant:last-of-type .body")


# --- the LSP messages the extension's client logged -------------------------------------------

# vscode-languageclient's trace: "[Trace - 10:24:54 AM] Sending request 'initialize - (0)'." then
# "Params: {json}" or "Result: {json}" and a blank line.
TRACE_HEADER = re.compile(
    r"^\[Trace - [^\]]+\] (?P<verb>Sending|Received) (?P<kind>request|response|notification) '(?P<method>[^']+?)(?: - \((?P<id>[^)]+)\))?'",
    re.MULTILINE,
)


@dataclass(frozen=True)
class TracedMessage:
    server: int  # which server: 1, then 2 after a restart (request ids start again at 0)
    sent: bool  # by VS Code to the server
    kind: str  # request, response or notification
    method: str
    id: str | None
    body: Any  # the params or the result; None when the trace shows none


def traced_messages(log: str) -> list[TracedMessage]:
    """The messages in a verbose trace, in order."""
    headers = list(TRACE_HEADER.finditer(log))
    messages = []
    server = 0
    for header, following in zip(headers, headers[1:] + [None]):
        if header["verb"] == "Sending" and header["kind"] == "request" and header["method"] == "initialize":
            server += 1
        chunk = log[header.end() : following.start() if following else len(log)]
        body = None
        label = re.search(r"^(?:Params|Result): ", chunk, re.MULTILINE)
        if label:
            try:
                body = json.JSONDecoder().raw_decode(chunk[label.end() :])[0]
            except json.JSONDecodeError:
                body = None  # still being written
        messages.append(TracedMessage(server, header["verb"] == "Sending", header["kind"], header["method"], header["id"], body))
    return messages


def inline_answers(messages: list[TracedMessage], uri: str, line: int, character: int, trigger_kind: int | None = None) -> list[dict]:
    """The server's textDocument/inlineCompletion results for requests at this 0-based cursor,
    of one LSP trigger kind (1 Invoked, 2 Automatic) or of any."""
    asked = {
        (m.server, m.id)
        for m in messages
        if m.sent and m.kind == "request" and m.method == "textDocument/inlineCompletion" and m.body
        and m.body["textDocument"]["uri"] == uri and m.body["position"] == {"line": line, "character": character}
        and trigger_kind in (None, m.body["context"]["triggerKind"])
    }
    return [m.body for m in messages if not m.sent and m.kind == "response" and (m.server, m.id) in asked and m.body is not None]


def model_ready_after_daemon_stopped(messages: list[TracedMessage]) -> bool:
    """Whether the server said its model was ready (fimble/status) after it told the user that
    the daemon stopped (window/showMessage)."""
    told = next(
        (i for i, m in enumerate(messages) if m.method == "window/showMessage" and m.body and "daemon stopped" in m.body["message"]),
        None,
    )
    return told is not None and any(
        m.method == "fimble/status" and m.body and m.body["model"] == "ready" for m in messages[told + 1 :]
    )


# --- all of it together -----------------------------------------------------------------------


@dataclass
class VSCode:
    server: CodeServer
    workbench: Workbench
    chat: ChatView
    env: dict[str, str]

    def trace(self) -> list[TracedMessage]:
        return traced_messages(self.server.extension_output())


@contextmanager
def running_vscode(installed: Installed, extension: Path, workspace: Path, settings: dict[str, Any], env: dict[str, str], root: Path) -> Iterator[VSCode]:
    """code-server, Chromium and browser.js started, the workbench loaded; all stopped afterwards."""
    with code_server(installed, extension, workspace, settings, env, root) as server, chromium(installed, root) as devtools:
        page = Page(installed, devtools, root)
        try:
            workbench = Workbench(page, server)
            workbench.load()
            yield VSCode(server, workbench, ChatView(page), env)
        finally:
            page.close()
