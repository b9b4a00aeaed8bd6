"""Soak: thousands of requests through `fimble lsp` with cancels, supersedes and chat turns mixed
in; afterwards the daemon must hold no more memory than after warm-up, no KV page, and no entry in
any per-request table.

    python benchmarks/soak.py                      # 5,000 requests on the tiny model; fills "soak"
                                                   # in benchmarks/results/reliability.json
    python benchmarks/soak.py --model embedded     # the same on the embedded 0.5B model (slower)
    python benchmarks/soak.py --requests 200       # a smoke run

The default model is the tests' tiny random-weight Qwen2 (tests/conftest.build_tiny_checkpoint:
two layers, a real byte-level BPE tokenizer), through the same daemon, engine, scheduler and paged
cache as any model, so 5,000 requests take minutes; its answers are nonsense, which a soak does not
mind. Three `fimble lsp` processes share one daemon (a runtime dir of the benchmark's own), each
typing a real third-party file (benchmarks/editor_replay.py), each step one of (seeded):
  - complete  (55%): a keystroke, a request (the one before cancelled), wait for the answer;
  - supersede (20%): a keystroke and a request, then at once another keystroke and request, with
    no $/cancelRequest: the server ends the first on its own;
  - cancel    (15%): a keystroke, a request, $/cancelRequest 0-80 ms later;
  - chat      (10%): a fimble/chat turn streaming in the background (four turns a session), a
    third of them cancelled 0-0.5 s in; typing goes on meanwhile.
The server runs with the suggestion cache, prefetch, debounce and abstaining off, so every request
reaches the model. After --warm-up requests the clients wait for the daemon to go idle and its RSS
(psutil) is the baseline; then --requests more; then, idle again after --idle-s, the RSS, the KV
cache's pages in use and the sizes of the per-request maps (engine handles, the scheduler's
cached-token counts, active and waiting requests, block tables, the connections' handles).
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
from dataclasses import dataclass, field
from pathlib import Path

import psutil

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
from benchmarks.reliability_results import record  # noqa: E402
from fimble.models.daemon_client import DaemonClient  # noqa: E402

SETTINGS = {**MODEL_EVERY_KEYSTROKE, "maxDebounceMs": 0}
ACTIONS = (("complete", 55), ("supersede", 20), ("cancel", 15), ("chat", 10))
CHAT_TURNS_PER_SESSION = 4
ANSWER_TIMEOUT_S = 60.0


@dataclass
class Budget:
    """Requests left to send in the current stage, shared by the clients."""

    left: int = 0
    actions: dict[str, int] = field(default_factory=lambda: {name: 0 for name, _ in ACTIONS})

    def take(self, count: int = 1) -> bool:
        if self.left < count:
            return False
        self.left -= count
        return True


class SoakClient:
    """One editor window: a typist taking seeded random actions, and at most one chat at a time."""

    def __init__(self, editor: Editor, seed: int, chat_max_tokens: int):
        self.editor = editor
        self.random = random.Random(seed)
        self.keys = editor.keystrokes()
        self.chat_max_tokens = chat_max_tokens
        self.chat_task: asyncio.Task | None = None
        self.session_id: str | None = None
        self.turns = 0

    def key(self, phase: str, cancel_previous: bool = True) -> Sent:
        self.editor.type(next(self.keys))
        return self.editor.request_completion(phase, cancel_previous)

    async def run(self, phase: str, budget: Budget) -> None:
        names, weights = zip(*ACTIONS)
        while budget.left > 0:
            action = self.random.choices(names, weights)[0]
            if action == "chat" and (self.chat_task is not None and not self.chat_task.done()):
                action = "complete"
            if not budget.take(2 if action == "supersede" else 1):
                action = "complete"
                if not budget.take():
                    return
            budget.actions[action] += 1
            await getattr(self, action)(phase)
        if self.chat_task is not None:
            await self.chat_task

    async def complete(self, phase: str) -> None:
        sent = self.key(phase)
        await asyncio.wait([sent.future], timeout=ANSWER_TIMEOUT_S)

    async def supersede(self, phase: str) -> None:
        self.key(phase)
        sent = self.key(phase, cancel_previous=False)
        await asyncio.wait([sent.future], timeout=ANSWER_TIMEOUT_S)

    async def cancel(self, phase: str) -> None:
        sent = self.key(phase)
        await asyncio.sleep(self.random.uniform(0, 0.08))
        self.editor.cancel(sent)
        await asyncio.wait([sent.future], timeout=ANSWER_TIMEOUT_S)

    async def chat(self, phase: str) -> None:
        if self.turns % CHAT_TURNS_PER_SESSION == 0:
            self.session_id = None
        self.turns += 1
        sent = self.editor.chat_about_opening(phase, self.chat_max_tokens, self.session_id)
        cancel_after = self.random.uniform(0, 0.5) if self.random.random() < 1 / 3 else None
        self.chat_task = asyncio.create_task(self._follow_chat(sent, cancel_after))

    async def _follow_chat(self, sent: Sent, cancel_after: float | None) -> None:
        if cancel_after is not None:
            await asyncio.wait([sent.future], timeout=cancel_after)
            if not sent.future.done():
                self.editor.cancel(sent)
        await asyncio.wait([sent.future], timeout=ANSWER_TIMEOUT_S)
        if sent.outcome() == "text":
            self.session_id = sent.future.result().sessionId  # the next turn continues it
        else:
            self.session_id = None  # a cancelled or failed turn: start afresh (a session may be left answering)


def tiny_config(root: Path) -> Path:
    from tests.conftest import build_tiny_checkpoint, write_tiny_config

    return write_tiny_config(root / "config.toml", build_tiny_checkpoint(root / "tiny-qwen2"))


async def idle_snapshot(daemon: DaemonClient, ledgers: list[Ledger], idle_s: float) -> dict:
    """The daemon once every request is answered and it has been idle for `idle_s`: RSS and status."""
    await asyncio.gather(*(ledger.settle(ANSWER_TIMEOUT_S) for ledger in ledgers))
    await wait_until_idle(daemon, timeout_s=60)
    await asyncio.sleep(idle_s)
    status = await wait_until_idle(daemon, timeout_s=60)
    return {"rss_bytes": psutil.Process(status["pid"]).memory_info().rss, "status": status}


def tables_of(status: dict) -> dict:
    return {
        "connection_handles": status["connection_handles"],
        "engines": {roles: {"request_maps": e["request_maps"], "blocks_in_use": e["cache"]["blocks_in_use"],
                            "blocks_cached_for_reuse": e["cache"]["blocks_cached_for_reuse"], "running": e["running"]}
                    for roles, e in engines_of(status).items()},
    }


async def stage(name: str, clients: list[SoakClient], requests: int, daemon: DaemonClient, rss_every: int) -> tuple[Budget, list[tuple[int, int]]]:
    """Send `requests` requests across the clients; the daemon's RSS every `rss_every` of them."""
    budget = Budget(left=requests)
    samples: list[tuple[int, int]] = []
    started = time.monotonic()

    async def sample_rss() -> None:
        pid = (await daemon.status())["pid"]
        next_at = 0
        while budget.left > 0:
            done = requests - budget.left
            if done >= next_at:
                samples.append((done, psutil.Process(pid).memory_info().rss))
                log(f"[{name}] {done}/{requests} requests, {time.monotonic() - started:.0f} s, daemon RSS {samples[-1][1] / 2**20:.0f} MiB")
                next_at += rss_every
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_rss())
    await asyncio.gather(*(client.run(name, budget) for client in clients))
    sampler.cancel()
    return budget, samples


def answer_latencies(ledgers: list[Ledger], phase: str) -> dict[str, float | None]:
    """Request to answer of the completions answered with text, for a sense of the pace."""
    latencies = [e.latency_s for ledger in ledgers for e in ledger.sent if e.phase == phase and e.kind == "completion" and e.outcome() == "text"]
    return {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "max": max(latencies, default=None)}


def outcomes(ledgers: list[Ledger], phase: str) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for ledger in ledgers:
        for entry in ledger.sent:
            if entry.phase == phase:
                kind = counts.setdefault(entry.kind, {})
                outcome = entry.outcome()
                kind[outcome] = kind.get(outcome, 0) + 1
    return counts


async def main_async(args: argparse.Namespace) -> dict:
    files = FILES[: args.clients]
    with tempfile.TemporaryDirectory(prefix="fimble-soak-") as root:
        config = tiny_config(Path(root)) if args.model == "tiny" else None
        env = daemon_env(Path(root), config)
        os.environ["FIMBLE_RUNTIME_DIR"] = root  # this process's DaemonClient finds the same daemon
        editors_clients = [await start_editor(SETTINGS, env) for _ in files]
        daemon = DaemonClient(autostart=False)
        try:
            model = (await wait_until_loaded(daemon))["roles"]["single_line"]["model"]
            ledgers = [Ledger() for _ in files]
            editors = [Editor(client, f"file:///soak/{i}/{Path(name).name}", file_lines(package, name), ledger)
                       for i, (client, (_, package, name), ledger) in enumerate(zip(editors_clients, files, ledgers))]
            for editor in editors:
                editor.open()
            clients = [SoakClient(editor, seed=args.seed + i, chat_max_tokens=args.chat_max_tokens) for i, editor in enumerate(editors)]
            started = time.monotonic()
            await stage("warm_up", clients, args.warm_up, daemon, rss_every=max(args.warm_up // 2, 1))
            baseline = await idle_snapshot(daemon, ledgers, args.idle_s)
            log(f"[baseline] daemon RSS {baseline['rss_bytes'] / 2**20:.1f} MiB")
            budget, samples = await stage("soak", clients, args.requests, daemon, rss_every=max(args.requests // 10, 1))
            final = await idle_snapshot(daemon, ledgers, args.idle_s)
            elapsed = time.monotonic() - started
        finally:
            for client in editors_clients:
                try:
                    await stop_editor(client)
                except Exception as error:  # one stuck client must not keep the daemon running
                    log(f"a client did not stop cleanly: {error!r}")
            await daemon.close()
            stop_daemon(env)

    soak_requests = sum(entry.phase == "soak" for ledger in ledgers for entry in ledger.sent)
    growth = (final["rss_bytes"] - baseline["rss_bytes"]) / baseline["rss_bytes"]
    after = tables_of(final["status"])
    leaked_pages = sum(engine["blocks_in_use"] for engine in after["engines"].values())
    soak_outcomes = outcomes(ledgers, "soak")
    hanging = sum(kind.get("hanging", 0) for kind in soak_outcomes.values())
    maps_empty = after["connection_handles"] == 0 and all(not any(e["request_maps"].values()) for e in after["engines"].values())
    figures = {"soak_requests": soak_requests, "rss_growth_fraction": growth, "leaked_pages": leaked_pages}
    details = {
        "model": f"{args.model} ({model})",
        "clients": len(files),
        "actions": budget.actions,
        "outcomes": soak_outcomes,
        "hanging": hanging,
        "completion_answer_latency_s": answer_latencies(ledgers, "soak"),
        "rss_mib": {"after_warm_up": baseline["rss_bytes"] / 2**20, "end_idle": final["rss_bytes"] / 2**20,
                    "during": [(done, rss / 2**20) for done, rss in samples]},
        "after_warm_up": tables_of(baseline["status"]),
        "end_idle": after,
        "per_request_maps_empty": maps_empty,
        "daemon_roles": {name: {k: role.get(k) for k in ("requests", "cancelled", "errors", "ttft_p50_s")}
                         for name, role in final["status"]["roles"].items()},
        "goals": {"leaked_pages == 0": leaked_pages == 0, "rss_growth_fraction <= 0.05": growth <= 0.05,
                  "per-request maps empty": maps_empty, "no request hangs": hanging == 0},
        "settings": {**SETTINGS, "warm_up_requests": args.warm_up, "idle_s": args.idle_s, "chat_max_tokens": args.chat_max_tokens,
                     "seed": args.seed, "mix_percent": dict(ACTIONS)},
        "files": file_versions(),
        "elapsed_s": elapsed,
    }
    command = "python benchmarks/soak.py" + (f" --model {args.model}" if args.model != "tiny" else "") + (
        f" --requests {args.requests}" if args.requests != 5000 else "")
    record("soak", figures, command=command, details=details)
    return {**figures, "goals": details["goals"], "end_idle": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests after the warm-up")
    parser.add_argument("--warm-up", type=int, default=500, help="requests before the RSS baseline")
    parser.add_argument("--model", choices=("tiny", "embedded"), default="tiny")
    parser.add_argument("--clients", type=int, default=3, choices=range(1, len(FILES) + 1))
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle time before each measurement")
    parser.add_argument("--chat-max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
