"""Typing session: a person writes real third-party source files through `fimble lsp`, in real time,
with the suggestion cache and prefetch off, then on, in one run on one daemon (the embedded model).

    python benchmarks/typing_session.py               # writes benchmarks/results/typing_session.{json,png}

The files are the first `--lines` lines of `pathspec/pattern.py` and of `platformdirs/unix.py`, from
the installed packages. The typist starts from an empty document and types each line's text at a
steady `--chars-per-s`, with a pause of `--line-pause-s` at each line end, after Enter (which
brings the line's indentation with it, as editors do) and before the line's first character. Before each keystroke the typist looks at the ghost text: when
it is a non-empty start of the true rest of the line, they press Tab, and the editor runs the
item's command (`fimble.accepted`). Every keystroke asks for an inline completion and cancels the
request before it, as VS Code does. A suggestion counts as shown when its answer arrives before the
next keystroke; its latency runs from the keystroke to the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lsp_text import utf16_length  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from fimble.models.daemon_client import DaemonClient  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FILES = (("pathspec", "pattern.py"), ("platformdirs", "unix.py"))
RUNS = {
    # Before the cache: every keystroke asks the model, and no answer is cut short.
    "off": {"cacheSuggestions": False, "prefetch": False, "maxLatencyMs": 0},
    "on": {},  # the defaults
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def source_lines(package: str, name: str, count: int) -> list[str]:
    origin = importlib.util.find_spec(package).origin
    return (Path(origin).parent / name).read_text().splitlines()[:count]


@dataclass
class Tally:
    chars_total: int = 0
    chars_accepted: int = 0
    keystrokes: int = 0
    suggestions_shown: int = 0
    shown_without_model_call: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # of the suggestions shown
    # (keystroke number, latency ms) of every answer shown, for the plot
    timeline: list[tuple[int, float]] = field(default_factory=list)
    model_requests: int = 0  # the daemon's generations during the run


@dataclass
class Pending:
    future: asyncio.Future
    request_id: str
    sent_at: float
    answered_at: float | None = None
    counted: bool = False  # seen on screen (and tallied) already


class Typist:
    """One document written line by line through one `fimble lsp`."""

    def __init__(self, client: LanguageClient, uri: str, tally: Tally, chars_per_s: float, line_pause_s: float):
        self.client, self.uri, self.tally = client, uri, tally
        self.interval = 1 / chars_per_s
        self.line_pause_s = line_pause_s
        self.text = ""
        self.version = 1
        self.pending: Pending | None = None
        self.next_key_at = time.monotonic()

    @property
    def cursor(self) -> types.Position:
        lines = self.text.split("\n")
        return types.Position(line=len(lines) - 1, character=utf16_length(lines[-1]))

    async def write(self, lines: list[str]) -> None:
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri=self.uri, language_id="python", version=1, text=""))
        )
        for number, line in enumerate(lines):
            body = line.lstrip(" ")
            indentation = line[: len(line) - len(body)]
            if number > 0:
                await self.key("\n" + indentation)  # Enter, with the editor's indentation
                self.tally.chars_total += 1
            self.next_key_at += self.line_pause_s  # the typist thinks before writing the line
            self.tally.chars_total += len(body)
            typed = 0
            while typed < len(body):
                suggestion = await self.look()
                rest = body[typed:]
                if suggestion is not None and suggestion.insert_text and rest.startswith(suggestion.insert_text):
                    await self.accept(suggestion)
                    typed += len(suggestion.insert_text)
                    self.tally.chars_accepted += len(suggestion.insert_text)
                else:
                    await self.key(body[typed])
                    typed += 1
        await self.settle()

    async def look(self) -> types.InlineCompletionItem | None:
        """Wait for the next keystroke's time; the suggestion on screen then, if any."""
        await asyncio.sleep(max(self.next_key_at - time.monotonic(), 0))
        pending = self.pending
        if pending is None or not pending.future.done() or pending.future.cancelled() or pending.future.exception():
            return None
        result = pending.future.result()
        items = result.items if result is not None else []
        if not items or not items[0].insert_text:
            return None
        if not pending.counted:
            pending.counted = True
            latency = (pending.answered_at - pending.sent_at) * 1000
            self.tally.suggestions_shown += 1
            self.tally.latencies_ms.append(latency)
            self.tally.timeline.append((self.tally.keystrokes, latency))
            arguments = items[0].command.arguments if items[0].command else None
            if arguments and arguments[0].get("fromCache"):
                self.tally.shown_without_model_call += 1
        return items[0]

    async def key(self, text: str) -> None:
        self.edit(text)
        self.request()

    async def accept(self, item: types.InlineCompletionItem) -> None:
        self.edit(item.insert_text)
        if item.command is not None:
            await self.client.workspace_execute_command_async(types.ExecuteCommandParams(command=item.command.command, arguments=item.command.arguments))
        self.request()

    def edit(self, text: str) -> None:
        here = self.cursor
        self.text += text
        self.version += 1
        self.tally.keystrokes += 1
        self.next_key_at = max(self.next_key_at, time.monotonic()) + self.interval
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
                content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=here, end=here), text=text)],
            )
        )

    def request(self) -> None:
        if self.pending is not None and not self.pending.future.done():
            self.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=self.pending.request_id))
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=self.uri),
            position=self.cursor,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        request_id = str(uuid.uuid4())
        future = asyncio.wrap_future(self.client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=request_id))
        pending = Pending(future, request_id, time.monotonic())
        future.add_done_callback(lambda _: setattr(pending, "answered_at", time.monotonic()))
        self.pending = pending

    async def settle(self) -> None:
        if self.pending is not None:
            await asyncio.gather(self.pending.future, return_exceptions=True)


async def start_client(settings: dict, env: dict, root: Path | None = None, on_status: Callable[[dict], None] | None = None) -> LanguageClient:
    """A `fimble lsp` started and initialized, with `root` as its workspace if one is given, and
    `on_status` called with each fimble/status from the first."""
    client = LanguageClient("fimble-typing-session", "0.1")
    if on_status is not None:
        client.feature("fimble/status")(lambda params: on_status(params._asdict() if hasattr(params, "_asdict") else dict(params)))

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def create_progress(params) -> None:
        return None

    @client.feature(types.WORKSPACE_CONFIGURATION)
    def configuration(params: types.ConfigurationParams) -> list[None]:
        return [None for _ in params.items]

    await client.start_io(sys.executable, "-m", "fimble", "lsp", env=env)
    # pygls pipes the server's stderr but never reads it; a full pipe would block the server.
    log_path = Path(env["FIMBLE_RUNTIME_DIR"]) / "lsp-stderr.log"
    client.stderr_drain = asyncio.create_task(drain(client._server.stderr, log_path))
    await client.initialize_async(
        types.InitializeParams(
            process_id=os.getpid(),
            capabilities=types.ClientCapabilities(
                text_document=types.TextDocumentClientCapabilities(inline_completion=types.InlineCompletionClientCapabilities()),
                window=types.WindowClientCapabilities(work_done_progress=True),
            ),
            initialization_options=settings,
            root_uri=root.as_uri() if root else None,
            workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)] if root else None,
        )
    )
    client.initialized(types.InitializedParams())
    return client


async def drain(stream: asyncio.StreamReader, path: Path) -> None:
    with open(path, "ab") as out:
        while line := await stream.readline():
            out.write(line)
            out.flush()


async def model_requests(daemon: DaemonClient) -> int:
    roles = (await daemon.status())["roles"]
    return sum(roles[name].get("requests", 0) for name in ("single_line", "multi_line"))


async def run_once(name: str, settings: dict, files: list[list[str]], env: dict, daemon: DaemonClient, args) -> Tally:
    client = await start_client(settings, env)
    tally = Tally()
    before = await model_requests(daemon)
    started = time.monotonic()
    try:
        for number, lines in enumerate(files):
            log(f"[{name}] file {number + 1}/{len(files)}: {len(lines)} lines")
            await Typist(client, f"file:///typing/{name}/{number}.py", tally, args.chars_per_s, args.line_pause_s).write(lines)
    finally:
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
    tally.model_requests = await model_requests(daemon) - before
    log(f"[{name}] {time.monotonic() - started:.0f} s, {tally.keystrokes} keystrokes, {tally.model_requests} model requests")
    return tally


def summary(tally: Tally) -> dict:
    shown = tally.suggestions_shown
    latencies = tally.latencies_ms
    return {
        "chars_total": tally.chars_total,
        "chars_accepted": tally.chars_accepted,
        "saved_fraction": tally.chars_accepted / tally.chars_total,
        "keystrokes": tally.keystrokes,
        "suggestions_shown": shown,
        "shown_without_model_call_fraction": tally.shown_without_model_call / shown if shown else None,
        "ghost_latency_p50_ms": statistics.median(latencies) if latencies else None,
        "ghost_latency_p90_ms": statistics.quantiles(latencies, n=10)[-1] if len(latencies) > 1 else None,
        "model_requests": tally.model_requests,
        "model_requests_per_100_keystrokes": 100 * tally.model_requests / tally.keystrokes,
    }


def plot(tallies: dict[str, Tally], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    for name, tally in tallies.items():
        if tally.timeline:
            keys, latencies = zip(*tally.timeline)
            axis.scatter(keys, latencies, s=8, label=f"cache and prefetch {name}", alpha=0.7)
    axis.set_yscale("log")
    axis.set_xlabel("keystroke")
    axis.set_ylabel("keystroke to ghost text (ms)")
    axis.set_title("Typing session through fimble lsp (embedded 0.5B, CPU)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


async def main_async(args) -> dict:
    files = [source_lines(package, name, args.lines) for package, name in FILES]
    with tempfile.TemporaryDirectory(prefix="fimble-typing-") as root:
        # A daemon of its own (runtime dir) with the user's config, or the embedded default.
        env = dict(os.environ, FIMBLE_RUNTIME_DIR=root, FIMBLE_DATA_DIR=str(Path(root) / "data"))
        if args.default_config:
            env["FIMBLE_CONFIG"] = str(Path(root) / "none.toml")
        os.environ.update(FIMBLE_RUNTIME_DIR=root)
        warm = await start_client({}, env)  # starts the daemon and loads the model
        daemon = DaemonClient()
        try:
            deadline = time.monotonic() + 900
            while (await daemon_status_ready(daemon)) is False:
                if time.monotonic() > deadline:
                    raise RuntimeError("the model did not load within 15 minutes")
                await asyncio.sleep(1)
            await warm.shutdown_async(None)
            warm.exit(None)
            await warm.stop()
            tallies = {name: await run_once(name, settings, files, env, daemon, args) for name, settings in RUNS.items()}
        finally:
            await daemon.close()
            subprocess.run([sys.executable, "-m", "fimble", "daemon", "stop"], env=env, capture_output=True, timeout=60)
    RESULTS.mkdir(exist_ok=True)
    plot(tallies, RESULTS / "typing_session.png")
    result = {name: summary(tally) for name, tally in tallies.items()}
    off, on = result["off"], result["on"]
    result["goals"] = {
        "on.model_requests_per_100_keystrokes <= 0.5 x off": on["model_requests_per_100_keystrokes"] <= 0.5 * off["model_requests_per_100_keystrokes"],
        "on.ghost_latency_p50_ms <= 0.3 x off": (on["ghost_latency_p50_ms"] or 0) <= 0.3 * (off["ghost_latency_p50_ms"] or 0),
        "on.saved_fraction >= off + 0.05": on["saved_fraction"] >= off["saved_fraction"] + 0.05,
    }
    result["settings"] = {"runs": RUNS, **vars(args), "files": [f"{package}/{name}" for package, name in FILES]}
    result["machine"] = {"cpu": cpu_model(), "python": platform.python_version()}
    (RESULTS / "typing_session.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


async def daemon_status_ready(daemon: DaemonClient) -> bool:
    try:
        await daemon.connect()
        return (await daemon.status())["roles"]["single_line"]["state"] == "ready"
    except (OSError, ConnectionError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100, help="lines typed from each file")
    parser.add_argument("--chars-per-s", type=float, default=8.0)
    parser.add_argument("--line-pause-s", type=float, default=1.0)
    parser.add_argument("--default-config", action="store_true", help="ignore FIMBLE_CONFIG: the embedded model")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps({name: result[name] for name in ("off", "on", "goals")}, indent=2))


if __name__ == "__main__":
    main()
