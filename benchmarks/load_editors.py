"""Load: eight editors typing at once on one daemon, first with no chat ("quiet"), then while a chat
answer streams all the time, one at a time ("under load").

    python benchmarks/load_editors.py                # 10 minutes a phase; fills "load" in
                                                     # benchmarks/results/reliability.json, and
                                                     # writes benchmarks/results/load_editors.png
    python benchmarks/load_editors.py --minutes 1    # a smoke run

Eight `fimble lsp` processes share one daemon (a runtime dir of the benchmark's own, the embedded
model unless --config names another). Each replays typing in a different real third-party file
(benchmarks/editor_replay.py): a keystroke every 1/--chars-per-s seconds, each asking for an inline
completion and cancelling the one before, as VS Code does. After a burst of 6 to 14 characters
(seeded per editor) the typist stops and waits for the answer, up to --answer-timeout-s, then
thinks for --think-s (an answer that takes longer is cancelled by the next keystroke and counted
as timed out, outside the TTFTs). The server runs with multi-line off, so every request is a
single-line one, and with the suggestion cache, prefetch and the latency budget off (every answer
is a model call).

TTFT here is what an editor sees: from the moment the inline completion request is sent to the
moment its answer arrives with text (`fimble lsp` answers an inline completion once, with the
whole line). It includes the debounce, the prompt build, queueing in the daemon, prefill and the
line's decode. Only the requests the typist waited for count; the superseded ones in a burst are
counted as sent and cancelled. Under load, the first editor's `fimble lsp` also asks fimble/chat
about its file's opening lines (--chat-max-tokens) again and again, one answer at a time.

Each phase ends by waiting up to --drain-s for every request still open; one not answered then is
hanging. A client starves when it got no answer with text in a phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.editor_replay import (  # noqa: E402
    FILES,
    MODEL_EVERY_KEYSTROKE,
    Editor,
    Ledger,
    Sent,
    daemon_env,
    engines_of,
    file_lines,
    file_versions,
    log,
    percentile,
    start_editor,
    stop_daemon,
    stop_editor,
    wait_until_idle,
    wait_until_loaded,
)
from benchmarks.reliability_results import RESULTS, record  # noqa: E402
from fimble.models.daemon_client import DaemonClient  # noqa: E402

SETTINGS = {**MODEL_EVERY_KEYSTROKE, "multiLine": False}
OUTCOMES = ("text", "empty", "cancelled", "error", "hanging")


class Typist:
    """One editor's typing: keystrokes at a steady rate, and a wait for the answer after each burst."""

    def __init__(self, editor: Editor, seed: int, args: argparse.Namespace):
        self.editor = editor
        self.random = random.Random(seed)
        self.args = args
        self.keys = editor.keystrokes()

    async def type_until(self, phase: str, until: float) -> None:
        interval = 1 / self.args.chars_per_s
        burst = self.random.randint(6, 14)
        next_key_at = time.monotonic()
        while time.monotonic() < until:
            await asyncio.sleep(max(next_key_at - time.monotonic(), 0))
            key = next(self.keys)
            self.editor.type(key)
            sent = self.editor.request_completion(phase)
            next_key_at = max(next_key_at, time.monotonic()) + interval
            burst -= bool(key.strip())
            if burst <= 0:
                sent.measured = True
                await asyncio.wait([sent.future], timeout=self.args.answer_timeout_s)
                burst = self.random.randint(6, 14)
                next_key_at = time.monotonic() + self.args.think_s


async def chat_until(editor: Editor, phase: str, until: float, max_tokens: int) -> None:
    """One chat answer at a time until the phase ends; the one still streaming then is cancelled."""
    while time.monotonic() < until:
        sent = editor.chat_about_opening(phase, max_tokens)
        await asyncio.wait([sent.future], timeout=max(until - time.monotonic(), 0.01))
        if not sent.future.done():
            editor.cancel(sent)
            await asyncio.wait([sent.future], timeout=30)


async def run_phase(name: str, typists: list[Typist], seconds: float, chat: bool, args: argparse.Namespace) -> None:
    log(f"[{name}] {seconds:.0f} s, {len(typists)} editors{', chat streaming' if chat else ''}")
    until = time.monotonic() + seconds
    tasks = [typist.type_until(name, until) for typist in typists]
    if chat:
        tasks.append(chat_until(typists[0].editor, name, until, args.chat_max_tokens))
    await asyncio.gather(*tasks)


def client_figures(entries: list[Sent]) -> dict:
    completions = [e for e in entries if e.kind == "completion"]
    waited = [e for e in completions if e.measured]
    ttfts = [e.latency_s for e in waited if e.outcome() == "text"]
    counts = {outcome: sum(e.outcome() == outcome for e in completions) for outcome in OUTCOMES}
    return {
        "requests_sent": len(completions),
        **{f"requests_{outcome}": count for outcome, count in counts.items()},
        "waited_for": len(waited),
        # Waited for past --answer-timeout-s, then cancelled by the next keystroke: not in the TTFTs,
        # so a phase with any has a p95 that is too low.
        "waited_timed_out": sum(e.outcome() == "cancelled" for e in waited),
        "answered_with_text": len(ttfts),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "ttft_max_s": max(ttfts) if ttfts else None,
    }


def phase_figures(name: str, ledgers: list[Ledger], daemon_status: dict) -> dict:
    per_client = [client_figures([e for e in ledger.sent if e.phase == name]) for ledger in ledgers]
    pooled = [e.latency_s for ledger in ledgers for e in ledger.sent if e.phase == name and e.measured and e.outcome() == "text"]
    chats = [e for ledger in ledgers for e in ledger.sent if e.phase == name and e.kind == "chat"]
    roles = daemon_status["roles"]
    return {
        "ttft_p50_s": percentile(pooled, 50),
        "ttft_p95_s": percentile(pooled, 95),
        "per_client": per_client,
        "hanging": sum(c["requests_hanging"] for c in per_client) + sum(e.outcome() == "hanging" for e in chats),
        "starved_clients": [i for i, c in enumerate(per_client) if c["answered_with_text"] == 0],
        "waited_timed_out": sum(c["waited_timed_out"] for c in per_client),
        "chat_answers": {outcome: sum(e.outcome() == outcome for e in chats) for outcome in OUTCOMES},
        # The engine's view (the daemon's rolling last 500 requests of each role): submit to first token.
        "daemon_single_line_ttft_p95_s": roles["single_line"].get("ttft_p95_s"),
        "daemon_chat_ttft_p50_s": roles["chat"].get("ttft_p50_s"),
    }


def plot(phases: dict[str, dict], ledgers: list[Ledger], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 5))
    for offset, (phase, color) in zip((-0.2, 0.2), (("quiet", "tab:blue"), ("under_load", "tab:orange"))):
        data = [[e.latency_s for e in ledger.sent if e.phase == phase and e.measured and e.outcome() == "text"] or [float("nan")] for ledger in ledgers]
        boxes = axis.boxplot(data, positions=[i + offset for i in range(len(ledgers))], widths=0.35, whis=(5, 95),
                             showfliers=False, patch_artist=True, medianprops={"color": "black"})
        for box in boxes["boxes"]:
            box.set_facecolor(color)
        p95 = phases[phase]["ttft_p95_s"]
        if p95 is not None:
            axis.axhline(p95, color=color, linestyle="--", linewidth=1, label=f"{phase.replace('_', ' ')}: all clients' p95 {p95:.2f} s")
    axis.set_xticks(range(len(ledgers)), names, rotation=20, fontsize=8)
    axis.set_ylabel("inline completion request to answer with text (s)")
    axis.set_title("8 editors on one daemon, quiet vs a chat streaming (boxes: p25-p75, whiskers p5-p95)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> dict:
    files = FILES[: args.clients]
    names = [f"{package}/{name}" for _, package, name in files]
    with tempfile.TemporaryDirectory(prefix="fimble-load-") as root:
        env = daemon_env(Path(root), args.config)
        os.environ["FIMBLE_RUNTIME_DIR"] = root  # this process's DaemonClient finds the same daemon
        clients = [await start_editor(SETTINGS, env) for _ in files]  # the first starts the daemon
        daemon = DaemonClient(autostart=False)
        try:
            loaded = await wait_until_loaded(daemon)
            model = loaded["roles"]["single_line"]["model"]
            ledgers = [Ledger() for _ in files]
            editors = [Editor(client, f"file:///load/{i}/{Path(name).name}", file_lines(package, name), ledger)
                       for i, (client, (_, package, name), ledger) in enumerate(zip(clients, files, ledgers))]
            for editor in editors:
                editor.open()
            typists = [Typist(editor, seed=i, args=args) for i, editor in enumerate(editors)]
            phases: dict[str, dict] = {}
            for name, seconds, chat in (("warm_up", args.warm_up_s, False), ("quiet", 60 * args.minutes, False), ("under_load", 60 * args.minutes, True)):
                await run_phase(name, typists, seconds, chat, args)
                await asyncio.gather(*(ledger.settle(args.drain_s) for ledger in ledgers))
                idle = await wait_until_idle(daemon, timeout_s=30)
                if name != "warm_up":
                    phases[name] = phase_figures(name, ledgers, idle)
                    phases[name]["daemon_after_drain"] = {"connection_handles": idle["connection_handles"],
                                                          "engines": {k: {"request_maps": e["request_maps"], "blocks_in_use": e["cache"]["blocks_in_use"]}
                                                                      for k, e in engines_of(idle).items()}}
                    log(f"[{name}] ttft p50 {phases[name]['ttft_p50_s']} s, p95 {phases[name]['ttft_p95_s']} s, "
                        f"hanging {phases[name]['hanging']}, starved {phases[name]['starved_clients']}")
        finally:
            for client in clients:
                try:
                    await stop_editor(client)
                except Exception as error:  # one stuck client must not keep the daemon running
                    log(f"a client did not stop cleanly: {error!r}")
            await daemon.close()
            stop_daemon(env)

    quiet, loaded_phase = phases["quiet"], phases["under_load"]
    figures = {"clients": len(files), "ttft_p95_s_quiet": quiet["ttft_p95_s"], "ttft_p95_s_under_load": loaded_phase["ttft_p95_s"]}
    ratio = (figures["ttft_p95_s_under_load"] / figures["ttft_p95_s_quiet"]) if quiet["ttft_p95_s"] and loaded_phase["ttft_p95_s"] else None
    details = {
        "ttft_definition": "inline completion request sent by the editor to its answer with text (one answer per request, the whole line), "
                           "for the requests the typist waited for; single-line only",
        "under_load_over_quiet": ratio,
        "goals": {
            "ttft_p95_s_under_load <= 1.5 x ttft_p95_s_quiet": ratio is not None and ratio <= 1.5,
            "no client starves": not quiet["starved_clients"] and not loaded_phase["starved_clients"],
            "no request hangs": quiet["hanging"] == 0 and loaded_phase["hanging"] == 0,
            "no waited-for answer timed out": quiet["waited_timed_out"] == 0 and loaded_phase["waited_timed_out"] == 0,
        },
        "phases": {name: {**figures_of_phase, "per_client": dict(zip(names, figures_of_phase["per_client"]))} for name, figures_of_phase in phases.items()},
        "model": model,
        "minutes_per_phase": args.minutes,
        "settings": {**SETTINGS, "chars_per_s": args.chars_per_s, "burst_chars": "6-14", "think_s": args.think_s,
                     "answer_timeout_s": args.answer_timeout_s, "chat_max_tokens": args.chat_max_tokens, "warm_up_s": args.warm_up_s},
        "files": file_versions(),
    }
    command = "python benchmarks/load_editors.py" + (f" --minutes {args.minutes:g}" if args.minutes != 10 else "")
    record("load", figures, command=command, details=details)
    plot(phases, ledgers, names, RESULTS / "load_editors.png")
    return {**figures, **{k: details[k] for k in ("under_load_over_quiet", "goals")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of each phase (quiet, under load)")
    parser.add_argument("--clients", type=int, default=8, choices=range(1, len(FILES) + 1))
    parser.add_argument("--chars-per-s", type=float, default=8.0)
    parser.add_argument("--think-s", type=float, default=0.5, help="pause after an answer, before typing on")
    parser.add_argument("--answer-timeout-s", type=float, default=120.0, help="the longest a typist waits for an answer")
    parser.add_argument("--chat-max-tokens", type=int, default=256)
    parser.add_argument("--warm-up-s", type=float, default=60.0, help="typing before the measured phases (not counted)")
    parser.add_argument("--drain-s", type=float, default=120.0, help="wait for open requests after each phase")
    parser.add_argument("--config", type=Path, default=None, help="a Fimble config file (default: none, the embedded model)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
