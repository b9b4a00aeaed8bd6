"""Fault recovery: the daemon SIGKILLed under load, several times, and how long each editor waits
for a completion from the model again.

    python benchmarks/fault_recovery.py                  # the embedded model, 3 editors, 5 kills
    python benchmarks/fault_recovery.py --every-keystroke  # the stress workload (below)
    python benchmarks/fault_recovery.py --config my.toml # any model config instead
    python benchmarks/fault_recovery.py --tiny           # the tests' tiny model: the daemon's part alone

Several `fimble lsp` servers (one per editor window) share one daemon of the run's own. Each
editor types a real source file at `--chars-per-s`, pausing after each word; the first editor
also streams chat answers, one question after another, in one session. Each kill comes while the
chat is streaming and completions are in flight. Before each kill the run waits for the daemon's
standby to be ready (models/standby.py: torch imported and the single-line model loaded), as it
is a few seconds after any start (`--no-standby`: none, so each kill starts a new daemon).

Two workloads:
- by default, the product's default settings, asking as VS Code does while typing: an automatic
  inline completion after each keystroke, the request before it cancelled. An editor has
  recovered at its first suggestion made by the model after the kill: an answer with text to a
  request asked after the kill, none of it from the suggestion cache (`fromCache`), while the
  server's `fimble/status` is "ready" (a server reports "error" before it answers a request that
  failed).
- `--every-keystroke`: a stress, no settings a user has: no suggestion cache, no prefetch, no
  abstaining, no debounce, and every keystroke an invoked request, so each keystroke's request
  is cancelled by the next and only one asked at a word's end can finish. An editor has recovered
  at its first answer served by the model (the answer came, not cancelled, and the status was
  "ready"), with text or without (the tiny random-weight model often answers nothing).

Recovery time runs from the kill to that answer, and includes the takeover by the standby daemon
or a new daemon's start, the model's load, and the model's pace on a KV cache that died with the
daemon. Both workloads first measure the same typing and chat without a kill, as a baseline. At
the end the chat session must hold every turn asked, the cut answers with the text they had
streamed. Figures go to benchmarks/results/reliability.json (`recovery_s_max`, goal <= 5, from the
default workload; the stress and the tiny model keep keys of their own), with each kill's figures
in the part's details.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lsp_text import utf16_length  # noqa: E402
from benchmarks.reliability_results import record  # noqa: E402
from benchmarks.typing_session import daemon_status_ready, log, start_client  # noqa: E402
from fimble.models.daemon_client import DaemonClient  # noqa: E402

# The stress workload: every answer from the model, no cache, no prefetch, no abstaining, no debounce.
EVERY_KEYSTROKE_SETTINGS = {"cacheSuggestions": False, "prefetch": False, "abstainBelowLogprob": None, "maxDebounceMs": 0}
FILES = (("pathspec", "pattern.py"), ("platformdirs", "unix.py"), ("platformdirs", "api.py"))
CHAT_QUESTION = "Explain, step by step and in detail, how a gitignore pattern is matched against a path."
# Long enough to be streaming at each kill; short enough that the baseline's answer, at the lowest
# priority behind three typing editors, ends on 2 vCPUs (1,500 tokens took over 600 s there).
CHAT_ANSWER_TOKENS = 400
GIVE_UP_S = 180.0  # an editor not served again by then counts as this many seconds
GIVE_UP_WITHOUT_KILL_S = 15.0  # the baseline's instants end this long before its end


def source_text(package: str, name: str) -> str:
    return (Path(importlib.util.find_spec(package).origin).parent / name).read_text()


@dataclass
class Editor:
    """One editor window typing a file into its own `fimble lsp`."""

    client: LanguageClient
    uri: str
    text: str
    chars_per_s: float
    pause_s: float
    every_keystroke: bool  # the stress workload: invoked requests, and any answer served counts
    typed: int = 0
    version: int = 1
    served: list[tuple[float, float, bool]] = field(default_factory=list)  # (asked, answered, has text), monotonic
    model_state: str = "starting"  # the server's last fimble/status "model"
    stopping: bool = False
    pending: asyncio.Future | None = None
    pending_id: str = ""

    def __post_init__(self) -> None:
        @self.client.feature("fimble/status")
        def on_status(params) -> None:
            params = params._asdict() if hasattr(params, "_asdict") else params
            self.model_state = params["model"]

    def document(self) -> str:
        return self.text[: self.typed]

    async def type_on(self) -> None:
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=self.uri, language_id="python", version=self.version, text=""))
        )
        while not self.stopping:
            self.typed = self.typed + 1 if self.typed < len(self.text) else 1  # start over at the end
            self.version += 1
            self.client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
                    content_changes=[types.TextDocumentContentChangeWholeDocument(text=self.document())],
                )
            )
            self.ask()
            # A pause after each word, as a typist makes, long enough for an answer to arrive.
            word_end = self.text[self.typed - 1].isspace()
            await asyncio.sleep(self.pause_s if word_end else 1 / self.chars_per_s)

    def ask(self) -> None:
        """Ask at the cursor, cancelling the request of the keystroke before, as VS Code does."""
        if self.pending is not None and not self.pending.done():
            self.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=self.pending_id))
        before = self.document()
        line_start = before.rfind("\n") + 1
        position = types.Position(line=before.count("\n"), character=utf16_length(before[line_start:]))
        self.pending_id = f"{self.uri}#{self.version}"
        asked = time.monotonic()
        self.pending = asyncio.ensure_future(
            self.client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION,
                types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=self.uri),
                    position=position,
                    context=types.InlineCompletionContext(trigger_kind=self.trigger_kind),
                ),
                msg_id=self.pending_id,
            )
        )
        self.pending.add_done_callback(lambda done: self.on_answer(done, asked))

    @property
    def trigger_kind(self) -> types.InlineCompletionTriggerKind:
        return types.InlineCompletionTriggerKind.Invoked if self.every_keystroke else types.InlineCompletionTriggerKind.Automatic

    def on_answer(self, done: asyncio.Future, asked: float) -> None:
        if done.cancelled() or done.exception() is not None:  # cancelled by the next keystroke
            return
        if self.model_state != "ready":  # the server failed this request (the daemon was down)
            return
        answer = done.result()
        items = (answer.items if isinstance(answer, types.InlineCompletionList) else answer) or []
        has_text = any(str(item.insert_text) for item in items)
        if not self.every_keystroke and not (has_text and not any(from_suggestion_cache(item) for item in items)):
            return  # with the cache on, only a suggestion the model made counts
        self.served.append((asked, time.monotonic(), has_text))

    def recovery_after(self, killed_at: float, with_text: bool = False) -> float | None:
        """Seconds from the kill to the first served answer (with text, if asked) to a request
        asked after it."""
        for asked, answered, has_text in self.served:
            if asked >= killed_at and (has_text or not with_text):
                return answered - killed_at
        return None


def from_suggestion_cache(item: types.InlineCompletionItem) -> bool:
    """Whether the server took the item from its suggestion cache (or a generation it was already
    running) rather than from a generation started for this request; its accept command says so."""
    record = item.command.arguments[0] if item.command and item.command.arguments else {}
    record = record._asdict() if hasattr(record, "_asdict") else record
    return bool(record.get("fromCache"))


@dataclass
class ChatRun:
    """Chat answers streamed one after another in one session of the first editor."""

    client: LanguageClient
    session_id: str | None = None
    streamed: dict[int, str] = field(default_factory=dict)  # message index -> text received
    answers: list[dict] = field(default_factory=list)
    chunk_seen: asyncio.Event = field(default_factory=asyncio.Event)
    pending: asyncio.Future | None = None

    def __post_init__(self) -> None:
        @self.client.feature("fimble/chatChunk")
        def on_chunk(params) -> None:
            params = params._asdict() if hasattr(params, "_asdict") else params
            index = params["messageIndex"]
            self.streamed[index] = self.streamed.get(index, "") + params["text"]
            self.chunk_seen.set()

    def start(self) -> None:
        self.chunk_seen.clear()
        params = {"message": CHAT_QUESTION, "maxTokens": CHAT_ANSWER_TOKENS}
        if self.session_id:
            params["sessionId"] = self.session_id
        self.pending = asyncio.ensure_future(self.client.protocol.send_request_async("fimble/chat", params))

    async def finish(self) -> dict:
        answer = await self.pending
        answer = answer._asdict() if hasattr(answer, "_asdict") else dict(answer)
        self.session_id = answer["sessionId"]
        self.answers.append(answer)
        return answer


def model_config(args, root: Path) -> Path:
    """The config file the run's daemon reads: the user's --config, the tests' tiny random-weight
    model for every role (--tiny: recovery without the cost of loading a real model), or none (the
    embedded model for every role)."""
    if args.config:
        return Path(args.config).resolve()
    path = root / "models.toml"
    if args.tiny:
        from tests.conftest import build_tiny_checkpoint, write_tiny_config

        write_tiny_config(path, build_tiny_checkpoint(root / "tiny"))
    return path


async def daemon_pid(env: dict) -> int:
    client = DaemonClient(autostart=False)
    try:
        return (await client.status())["pid"]
    finally:
        await client.close()


async def wait_for_ready(timeout_s: float = 900) -> None:
    daemon = DaemonClient(autostart=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not await daemon_status_ready(daemon):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the model did not load within {timeout_s} s")
            await asyncio.sleep(0.5)
    finally:
        await daemon.close()


async def completions_running() -> int:
    daemon = DaemonClient(autostart=False)
    try:
        roles = (await daemon.status())["roles"]
        return sum(roles.get(name, {}).get("running", 0) for name in ("single_line", "multi_line"))
    finally:
        await daemon.close()


async def wait_for_standby(timeout_s: float = 120) -> float:
    """Seconds waited until the daemon's standby has imported torch and waits to take over."""
    daemon = DaemonClient(autostart=False)
    started = time.monotonic()
    try:
        while ((await daemon.status()).get("standby") or {}).get("state") != "ready":
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the standby daemon was not ready within {timeout_s} s")
            await asyncio.sleep(0.2)
    finally:
        await daemon.close()
    return time.monotonic() - started


async def waits_without_a_kill(editors: list[Editor], chat: ChatRun, seconds: float) -> list[float]:
    """What recovery compares with: the same typing and chat, no kill. From instants every 0.5 s,
    how long each editor waits for its next served answer (the typing pattern and the model's
    speed set it: a request lives only until the next keystroke, unless a word ends)."""
    chat.start()
    started = time.monotonic()
    await asyncio.sleep(seconds)
    await asyncio.wait_for(chat.finish(), 600)
    instants = [started + 0.5 * i for i in range(int((seconds - GIVE_UP_WITHOUT_KILL_S) / 0.5))]
    waits = [editor.recovery_after(t) for t in instants for editor in editors]
    return [wait if wait is not None else GIVE_UP_WITHOUT_KILL_S for wait in waits]


async def one_kill(number: int, editors: list[Editor], chat: ChatRun, env: dict, rng: random.Random, standby: bool) -> dict:
    standby_wait_s = await wait_for_standby() if standby else None
    chat.start()
    await asyncio.wait_for(chat.chunk_seen.wait(), 300)
    await asyncio.sleep(rng.uniform(0.3, 1.5))  # somewhere in the answer, and between keystrokes
    in_flight = await completions_running()
    pid = await daemon_pid(env)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    cut = await asyncio.wait_for(chat.finish(), 30)
    await wait_for_ready(GIVE_UP_S)
    daemon_ready_s = time.monotonic() - killed_at  # the new daemon up, its completion model loaded
    deadline = killed_at + GIVE_UP_S
    while any(editor.recovery_after(killed_at) is None for editor in editors) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    recovery = [editor.recovery_after(killed_at) for editor in editors]
    with_text = [editor.recovery_after(killed_at, with_text=True) for editor in editors]
    figures = {
        "kill": number,
        "daemon_pid": pid,
        "standby_wait_s": round(standby_wait_s, 2) if standby else None,
        "completions_in_flight": in_flight,
        "chat_cut": cut["finishReason"] == "error",
        "chat_text_kept": cut["text"] == chat.streamed.get(cut["messageIndex"], ""),
        "daemon_ready_s": round(daemon_ready_s, 3),
        "recovery_s": [round(s, 3) if s is not None else None for s in recovery],
        "first_text_s": [round(s, 3) if s is not None else None for s in with_text],
    }
    figures["recovery_s_max"] = max((s if s is not None else GIVE_UP_S) for s in recovery)
    log(f"kill {number}: pid {pid}, {in_flight} in flight, daemon ready {daemon_ready_s:.2f} s, editors served {figures['recovery_s']}")
    await asyncio.sleep(2.0)  # typing goes on against the new daemon before the next kill
    return figures


async def chat_session_turns(client: LanguageClient, session_id: str) -> list[dict]:
    stored = await client.protocol.send_request_async("fimble/chatSessions", {"action": "get", "sessionId": session_id})
    stored = stored._asdict() if hasattr(stored, "_asdict") else stored
    return [message._asdict() if hasattr(message, "_asdict") else message for message in stored["messages"]]


async def main_async(args) -> dict:
    texts = [source_text(package, name) for package, name in FILES]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="fimble-faults-") as root:
        env = dict(os.environ, FIMBLE_RUNTIME_DIR=root, FIMBLE_DATA_DIR=str(Path(root) / "data"))
        env["FIMBLE_CONFIG"] = str(model_config(args, Path(root)))
        env["FIMBLE_DAEMON_STANDBY"] = "1" if args.standby else "0"
        os.environ.update(FIMBLE_RUNTIME_DIR=root, FIMBLE_CONFIG=env["FIMBLE_CONFIG"])
        settings = EVERY_KEYSTROKE_SETTINGS if args.every_keystroke else {}
        clients = [await start_client(settings, env) for _ in range(args.editors)]
        editors = [
            Editor(client, f"file://{root}/editor{i}.py", texts[i % len(texts)], args.chars_per_s, args.pause_s, args.every_keystroke)
            for i, client in enumerate(clients)
        ]
        chat = ChatRun(clients[0])
        typing: list[asyncio.Task] = []
        try:
            await wait_for_ready()
            log("model ready; typing")
            typing = [asyncio.create_task(editor.type_on()) for editor in editors]
            await asyncio.sleep(3.0)
            baseline = await waits_without_a_kill(editors, chat, args.baseline_s)
            log(f"without a kill, the wait for a served answer: p50 {statistics.median(baseline):.2f} s, max {max(baseline):.2f} s")
            kills = [await one_kill(number, editors, chat, env, rng, args.standby) for number in range(1, args.kills + 1)]
            # One more answer after the last kill: the session goes on in the last daemon.
            chat.start()
            closing = await asyncio.wait_for(chat.finish(), 600)
            turns = await chat_session_turns(clients[0], chat.session_id)
        finally:
            for editor in editors:
                editor.stopping = True
            await asyncio.gather(*typing, return_exceptions=True)
            for client in clients:
                try:
                    await asyncio.wait_for(client.shutdown_async(None), 10)
                    client.exit(None)
                except Exception:
                    pass
                await client.stop()
            subprocess.run([sys.executable, "-m", "fimble", "daemon", "stop"], env=env, capture_output=True, timeout=60)

    asked = len(chat.answers)
    expected = []
    for answer in chat.answers:
        expected += [("user", CHAT_QUESTION, ""), ("assistant", answer["text"], answer["finishReason"])]
    kept = [(t["role"], t["content"], t["finishReason"]) for t in turns]
    recovery_max = max(kill["recovery_s_max"] for kill in kills)
    all_recovery = [s for kill in kills for s in kill["recovery_s"] if s is not None]
    details = {
        "model": f"config {args.config}" if args.config else "tiny random-weight Qwen2 (tests/conftest.py)" if args.tiny else "embedded Qwen2.5-Coder-0.5B-Instruct",
        "editors": args.editors,
        "workload": "every keystroke (stress)" if args.every_keystroke else "default settings, automatic requests",
        "standby": args.standby,
        "kills": kills,
        "recovery_s_p50": round(statistics.median(all_recovery), 3) if all_recovery else None,
        "served_wait_s_without_kill": {"p50": round(statistics.median(baseline), 3), "max": round(max(baseline), 3), "instants": len(baseline)},
        "daemon_ready_s_max": max(kill["daemon_ready_s"] for kill in kills),
        "chat_turns_asked": 2 * asked,
        "chat_turns_kept": len(turns),
        "chat_session_intact": kept == expected,
        "closing_answer_finish": closing["finishReason"],
        "settings": {**settings, "chars_per_s": args.chars_per_s, "pause_s": args.pause_s, "seed": args.seed},
        "load_average": os.getloadavg(),
    }
    command = "python benchmarks/fault_recovery.py" + (f" --config {args.config}" if args.config else " --tiny" if args.tiny else "")
    if args.every_keystroke:
        command += " --every-keystroke"
    if not args.standby:
        command += " --no-standby"
    if args.kills != 5 or args.editors != 3:
        command += f" --kills {args.kills} --editors {args.editors}"
    figures = {
        "recovery_s_max": round(recovery_max, 3),  # each editor served again
        "daemon_recovery_s_max": details["daemon_ready_s_max"],  # the daemon back, its model loaded
        "served_wait_s_p50_without_kill": details["served_wait_s_without_kill"]["p50"],
    }
    if args.record:
        # The embedded model under the default workload is the headline; the stress workload, the
        # tiny model's (the daemon's part alone) and other configs' keep their own keys.
        suffix = "" if not (args.tiny or args.config) else "_tiny" if args.tiny else "_config"
        suffix += "_every_keystroke" if args.every_keystroke else ""
        record("faults" + suffix, {key + suffix: value for key, value in figures.items()}, command=command, details=details)
    return {**figures, **details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editors", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--chars-per-s", type=float, default=8.0)
    parser.add_argument("--pause-s", type=float, default=1.5, help="pause after each word")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-s", type=float, default=45.0, help="typing and chat without a kill first, for comparison")
    parser.add_argument("--every-keystroke", action="store_true", help="the stress workload: no cache, no debounce, every keystroke asks")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random-weight model for every role")
    parser.add_argument("--config", help="a model config file (default: the embedded model for every role)")
    parser.add_argument("--no-standby", dest="standby", action="store_false", help="no standby daemon: every kill starts a new one")
    parser.add_argument("--no-record", dest="record", action="store_false", help="print, do not write reliability.json")
    args = parser.parse_args()
    import json

    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
