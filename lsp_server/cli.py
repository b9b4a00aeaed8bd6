"""The `fimble` command line: argument parsing and printing only; the work is done elsewhere."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from fimble.completion.prompt import Cursor
from fimble.models.spec import Role


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fimble", description="Local AI code completion.")
    commands = parser.add_subparsers(dest="command", required=True)

    complete = commands.add_parser("complete", help="print the completion at a cursor, as an editor would show it")
    complete.add_argument("file", type=Path)
    complete.add_argument("--line", type=int, required=True, help="1-based line of the cursor")
    complete.add_argument("--col", type=int, required=True, help="1-based column of the cursor (characters)")
    complete.add_argument("--stats", action="store_true", help="print prompt, cache and timing stats to stderr")

    chat = commands.add_parser("chat", help="ask about code; with no MESSAGE, each line read from stdin is a turn")
    chat.add_argument("message", nargs="?", help="the question; @file:PATH and @symbol:NAME attach code")
    chat.add_argument("--session", metavar="ID", help="continue this session (see --list)")
    chat.add_argument("--attach", metavar="FILE", type=Path, action="append", default=[], help="attach a file (repeatable)")
    chat.add_argument("--max-tokens", type=int, metavar="N", help="answer at most N tokens")
    chat.add_argument("--list", action="store_true", help="list the saved sessions")
    chat.add_argument("--delete", metavar="ID", help="delete a saved session")

    commands.add_parser("models", help="list the configured models and their state")
    commands.add_parser("stats", help="print how many suggestions were shown and accepted (kept on this machine only)")
    commands.add_parser("lsp", help="run the language server on stdio (editors start this)")
    daemon = commands.add_parser("daemon", help="the background process that holds the models")
    daemon.add_argument("action", choices=["run", "start", "stop", "status"])
    daemon.add_argument("--standby", action="store_true", help="with run: wait to take over when the running daemon dies")

    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("FIMBLE_LOG", "WARNING").upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "complete":
            return run_complete(args.file, args.line, args.col, args.stats)
        if args.command == "lsp":
            from fimble.lsp_server.server import run_stdio

            return run_stdio()
        if args.command == "daemon":
            return run_daemon_command(args.action, args.standby)
        if args.command == "chat":
            return run_chat(args)
        if args.command == "stats":
            return run_stats()
        return run_models()
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError) as error:
        print(f"fimble: error: {error}", file=sys.stderr)
        return 1


def run_complete(path: Path, line: int, col: int, show_stats: bool) -> int:
    """The editor's completion path (trigger, prompt, postprocess) on a file, with the models loaded
    in this process instead of the daemon. Invoked explicitly, so it never abstains."""
    import asyncio

    from fimble.completion.prompt import split_at_cursor
    from fimble.completion.service import CompletionRequest, complete
    from fimble.context.languages import language_id_for_path
    from fimble.lsp_server.settings import Settings
    from fimble.models.backend import EngineBackend, RoutedBackend
    from fimble.models.config import load_role_config
    from fimble.models.pool import EnginePool

    text = read_source(path)
    offset = len(split_at_cursor(text, Cursor(line - 1, col - 1))[0])
    request = CompletionRequest(text, offset, language_id_for_path(path) or "plaintext", explicit=True)
    roles = load_role_config()
    pool = EnginePool(roles)

    async def ask():
        backend = RoutedBackend(roles, EngineBackend(pool))
        try:
            return await complete(request, Settings().completion(), backend)
        finally:
            await backend.close()

    try:
        completion = asyncio.run(ask())
    finally:
        pool.close()
    for warning in completion.warnings:
        print(f"fimble: warning: {warning}", file=sys.stderr)
    if completion.empty_because == "model":
        raise RuntimeError(f"the model failed: {completion.error}")
    print(completion.text)
    if show_stats:
        s = completion.stats
        print(
            f"{completion.mode.value}: prompt {s.prompt_tokens} tokens ({s.cached_tokens} cached), "
            f"ttft {s.ttft_s or 0:.3f} s, {s.generated_tokens} tokens at {s.decode_tok_s or 0:.1f} tok/s, "
            f"mean logprob {completion.mean_logprob if completion.mean_logprob is not None else float('nan'):.3f}"
            + (f", empty: {completion.empty_because}" if completion.empty_because else ""),
            file=sys.stderr,
        )
    return 0


def read_source(path: Path) -> str:
    from fimble.context.files import secret_reason

    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise ValueError(f"{path} looks binary; fimble completes text files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 ({error.reason} at byte {error.start})") from None
    if (reason := secret_reason(path.absolute(), text)) is not None:
        raise ValueError(f"{path} holds secrets ({reason}); fimble sends nothing from it to a model")
    return text


def run_chat(args) -> int:
    """`fimble chat`: the editor's chat service (chat/service.py) through the daemon, streaming the
    answer to stdout. Sessions are the editor's too: `--session ID` continues one from either."""
    import asyncio

    from fimble.chat.session import SessionStore

    store = SessionStore()
    if args.list:
        listing = store.list()
        for session in listing.sessions:
            updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(session.updated))
            print(f"{session.id}  {updated}  {len(session.messages):3} messages  {session.title}")
        for problem in listing.problems:
            print(f"fimble: {problem}", file=sys.stderr)
        return 0
    if args.delete:
        if store.delete(args.delete):
            print(f"fimble: deleted session {args.delete}")
            return 0
        print(f"fimble: there is no session {args.delete!r} (see fimble chat --list)", file=sys.stderr)
        return 1
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError("--max-tokens must be at least 1")
    return asyncio.run(_chat_turns(args, store))


async def _chat_turns(args, store) -> int:
    """One turn per message (the argument, or each line of stdin). Ctrl-C stops the answer being
    written (it is kept, marked cancelled); at the prompt it ends the program."""
    import asyncio
    import signal

    from fimble.chat.service import AttachmentRequest, ChatInputError, ChatRequest, ChatService, ChatWorkspace
    from fimble.models.backend import DaemonBackend, RoutedBackend
    from fimble.models.config import load_role_config
    from fimble.models.daemon_client import DaemonClient

    client = DaemonClient()
    backend = RoutedBackend(load_role_config(), DaemonBackend(client))
    service = ChatService(store, backend)
    workspace = ChatWorkspace(Path.cwd(), _stored_index(Path.cwd()))
    attachments = tuple(AttachmentRequest("file", path=path.resolve()) for path in args.attach)
    interactive = args.message is None
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: service.cancel_all() or interrupted.set())
    lines = _stdin_lines() if interactive else None
    session_id, status = args.session, 0
    try:
        while True:
            if interactive:
                message = await _next_line(lines, interrupted)
                if message is None:
                    break
                if not message.strip():
                    continue
            else:
                message = args.message
            request = ChatRequest(message, session_id, attachments, args.max_tokens)
            try:
                answer = await service.ask(request, workspace, lambda chunk: _write(chunk.text))
            except ChatInputError as error:
                print(f"fimble: {error}", file=sys.stderr)
                if not interactive:
                    return 1
                continue
            attachments = ()  # stored with the session
            session_id = answer.session_id
            _write("\n")
            if answer.notice:
                print(f"fimble: {answer.notice}", file=sys.stderr)
            if answer.finish_reason == "error":
                status = 1
            if not interactive:
                status = status or (130 if answer.finish_reason == "cancelled" else 0)
                break
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await backend.close()
        await client.close()
    if session_id is not None:
        print(f"fimble: session {session_id} (continue it with: fimble chat --session {session_id})", file=sys.stderr)
    return status


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _stored_index(root: Path):
    """The workspace index of `root` when one was built before (by an editor): `@symbol:` and
    retrieved definitions use it. No index is built from scratch for a command-line question."""
    from fimble.context.indexer import WorkspaceIndex

    index = WorkspaceIndex(root)
    if not index.store.load():
        return None
    index.build()  # unchanged files are not read again
    return index


def _stdin_lines():
    """Lines of stdin in an asyncio queue (None at the end), read by a daemon thread so that
    leaving the prompt never waits for a blocked read."""
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="fimble-chat-stdin", daemon=True).start()
    return lines


async def _next_line(lines, interrupted) -> str | None:
    """The next question, or None at the end of input or on Ctrl-C at the prompt."""
    import asyncio

    if sys.stdin.isatty():
        print("> ", end="", file=sys.stderr, flush=True)
    interrupted.clear()
    getting, stopping = asyncio.ensure_future(lines.get()), asyncio.ensure_future(interrupted.wait())
    await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not getting.done():
        getting.cancel()
        return None
    return getting.result()


def run_daemon_command(action: str, as_standby: bool = False) -> int:
    import asyncio

    from fimble.models import daemon, daemon_client

    if action == "run":
        logging.getLogger().setLevel(os.environ.get("FIMBLE_LOG", "INFO").upper())
        try:
            daemon.run_daemon(as_standby=as_standby)
        except daemon.DaemonAlreadyRunningError as error:
            print(f"fimble: {error}", file=sys.stderr)
            return 0
        return 0
    return asyncio.run(_daemon_client_action(action, daemon_client))


async def _daemon_client_action(action: str, daemon_client) -> int:
    import asyncio

    from fimble.models import wire

    client = daemon_client.DaemonClient(autostart=action == "start")
    try:
        await client.connect()
    except daemon_client.DaemonUnavailableError:
        if action == "stop":
            print("fimble: the daemon is not running")
            return 0
        raise
    try:
        if action == "stop":
            await client.call(wire.Shutdown(), wire.Done)
            # Gone once it has let its standby go too, and freed the model's memory.
            await asyncio.get_running_loop().run_in_executor(None, daemon_client.wait_exited, client.daemon_pid, 30.0)
            print("fimble: daemon stopped")
        elif action == "start":
            status = await client.status()
            print(f"fimble: daemon running, pid {status['pid']}, socket {wire.socket_path()}")
        else:
            print_daemon_status(await client.status())
    finally:
        await client.close()
    return 0


def print_daemon_status(status: dict) -> None:
    print(f"pid {status['pid']}  protocol {status['version']}  up {status['uptime_s']:.0f} s  clients {status['clients']}  "
          f"exits after {status['idle_exit_s']:.0f} s without clients")
    standby = status.get("standby")
    if standby:
        print(f"standby: pid {standby['pid']}, {standby['state']}; takes over if the daemon dies")
    else:
        print("standby: none (after a crash a new daemon starts from scratch)")
    if status.get("config_error"):
        print(f"config error: {status['config_error']}")
    for role, entry in status["roles"].items():
        model = entry.get("model") or entry.get("spec", {}).get("source", "?")
        print(f"{role:12} {entry['state']:10} {model}  {entry.get('quantization', '')}")
        if entry.get("error"):
            print(f"{'':12} error: {entry['error']}")
        if entry.get("cache"):
            cache = entry["cache"]
            print(f"{'':12} cache: {cache['blocks_total']} pages of {cache['page_size']} tokens, "
                  f"{100 * (1 - cache['free_fraction']):.0f}% used, {cache['blocks_cached_for_reuse']} kept for reuse, "
                  f"{cache['blocks_evicted']} evicted")
        ttft = entry.get("ttft_p50_s")
        print(f"{'':12} requests {entry['requests']} (cancelled {entry['cancelled']}, errors {entry['errors']})"
              + (f", ttft p50 {ttft:.3f} s p95 {entry['ttft_p95_s']:.3f} s, total p50 {entry['total_p50_s']:.3f} s" if ttft is not None else ""))


def run_models() -> int:
    """The configured model of each role and its state; a remote server is asked what it offers."""
    import asyncio

    from fimble import dirs
    from fimble.models.config import load_role_config

    roles = load_role_config()
    print(f"config: {dirs.config_file()}")
    print_embedded_models()
    print("roles:")
    states = asyncio.run(_model_states(roles))
    for role, spec in ((role, roles.spec_for(role)) for role in Role):
        if spec.is_remote:
            print(f"{role.config_name:12} {spec.source} model={spec.model or '(the first it lists)'}  [{states[role]}]")
        else:
            quantization = spec.quantization or "auto (int8-weight-only on CPU, bf16 on GPU)"
            family = f" family={spec.family}" if spec.family else ""
            print(f"{role.config_name:12} {spec.source:40} quantization={quantization} device={spec.device}{family}  [{states[role]}]")
    return 0


def print_embedded_models() -> None:
    """The models that install with Fimble, by the `source` that names them, and their state."""
    from fimble.models.embedded import EMBEDDED_MODELS, embedded_checkpoint_state

    print("embedded models:")
    for source, model in EMBEDDED_MODELS.items():
        print(f"  {source:14} {model.name}, {model.size_text}  [{embedded_checkpoint_state(model=model)}]")


async def _model_states(roles) -> dict:
    from fimble.models.generation import BackendError
    from fimble.models.remote import RemoteBackend

    states = {}
    for role in Role:
        spec = roles.spec_for(role)
        if not spec.is_remote:
            states[role] = local_source_state(spec.source)
            continue
        remote = RemoteBackend(spec)
        try:
            states[role] = await remote.probe()
        except BackendError as error:
            states[role] = f"error: {error}"
        finally:
            await remote.close()
    return states


def local_source_state(source: str) -> str:
    from fimble.models.embedded import EMBEDDED_MODELS, embedded_checkpoint_state

    if source in EMBEDDED_MODELS:
        return embedded_checkpoint_state(model=EMBEDDED_MODELS[source])
    if Path(source).expanduser().exists():
        return "local directory"
    from fimble.models.loading import is_in_hub_cache

    return "in the hub cache" if is_in_hub_cache(source) else "not downloaded (needs the network once)"


def run_stats() -> int:
    from fimble.lsp_server.acceptance import AcceptanceStats, format_table, read_tallies

    path = AcceptanceStats().path
    print(format_table(read_tallies(path)))
    print(f"(from {path}; nothing of it leaves this machine)")
    return 0
