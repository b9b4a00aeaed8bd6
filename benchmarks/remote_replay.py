"""Remote replay: the keystroke replay (benchmarks/keystroke_replay.py's typing of requests'
sessions.py) through the remote backend against an OpenAI-compatible server, and through the local
daemon, in one run. The server is llama.cpp's C++ llama-server, or with `--server llama-cpp-python`
that package's FastAPI server, with the embedded model's GGUF and the same thread count
(tests/llama_server.py builds either for this CPU once).

    python benchmarks/remote_replay.py      # writes benchmarks/results/remote_replay.{json,png}
    python benchmarks/remote_replay.py --server llama-cpp-python   # remote_replay_llama_cpp_python.*

Each keystroke is a single-line completion through `completion.service.complete`, the editor's
path. Remote cold: an unrelated prompt goes between keystrokes, so the server's prefix cache finds
nothing to reuse; remote warm: keystroke after keystroke. The server's own timings (llama.cpp's
per-request lines in its log: prompt eval, eval, total; what was cached from llama-cpp-python's
prefix-match line, or from llama-server's timings in its answer) give what was cached and how long
the server itself took; `client_overhead_ms` is the rest of the time `complete` took: prompt
building, HTTP and the server's web layer, streaming, postprocess. llama-server is sent the prompt
as token ids (`send_token_ids`), so it does not tokenize it; llama-cpp-python's server takes text.
logprobs are off: llama-cpp-python computes them in Python at about 130 ms a token, which would
swamp every other figure (the README says so too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.keystroke_replay import RESULTS, plot, typed_file  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from fimble.completion.service import CompletionRequest, CompletionSettings, complete  # noqa: E402
from fimble.models.backend import DaemonBackend  # noqa: E402
from fimble.models.daemon_client import DaemonClient  # noqa: E402
from fimble.models.embedded import EMBEDDED_MODEL_NAME, ensure_embedded_checkpoint  # noqa: E402
from fimble.models.generation import GenerationRequest  # noqa: E402
from fimble.models.loading import default_threads  # noqa: E402
from fimble.models.remote import RemoteBackend  # noqa: E402
from fimble.models.spec import ModelSpec, Role  # noqa: E402
from tests.llama_server import LLAMA_CPP_VERSION, LlamaServer, NativeLlamaServer, ServerProcess, embedded_gguf, llama_cpp_site, native_server_binary  # noqa: E402

KEY_ENV = "FIMBLE_BENCH_REMOTE_KEY"
SETTINGS = CompletionSettings(multi_line=False, abstain_below_logprob=None)
FLUSH = "<|fim_prefix|>" + "".join(f"unrelated_{i} = {i} * {i}\n" for i in range(60)) + "<|fim_suffix|><|fim_middle|>"
_TIMING = {
    "prompt_eval_ms": r"prompt eval time =\s+([\d.]+) ms /\s+(\d+) tokens",
    "eval_ms": r"\beval time =\s+([\d.]+) ms /\s+(\d+) (?:runs|tokens)",
    "total_ms": r"total time =\s+([\d.]+) ms",
}


def keystroke_requests(text: str, start_line: int, keystrokes: int) -> list[CompletionRequest]:
    """The file from `start_line` typed a character at a time, the rest of each line not yet there
    and the file below it, skipping the keystrokes that leave the cursor at a line start or in the
    indentation (an editor's Enter puts the cursor after the indentation). Mid-line, each keystroke
    is one generation that the server itself stops at the line's end (at a line start a completion
    heals the line start and may ask twice), so each has one set of server timings."""
    cursor = sum(len(line) for line in text.splitlines(keepends=True)[:start_line])
    requests = []
    while len(requests) < keystrokes:
        cursor += 1
        line_start = text.rfind("\n", 0, cursor) + 1
        if not text[line_start:cursor].strip():
            continue  # a line break or indentation: an editor's Enter puts the cursor after it
        line_end = text.find("\n", cursor)
        requests.append(CompletionRequest(text[:cursor] + text[line_end:], cursor, "python", explicit=True))
    return requests


class ServerTimings:
    """llama.cpp's timing lines for each request, read from the server's log as they appear."""

    def __init__(self, log: Path):
        self.log = log
        self.offset = log.stat().st_size

    def next_request(self, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            end = re.search(r"total time =[^\n]*\n", text := self._unread())
            if end is not None:
                block = text[: end.end()]
                self.offset += len(block.encode())
                return self._parse(block)
            time.sleep(0.01)
        raise RuntimeError("the server printed no timings for the request (did it stop early?)")

    def _unread(self) -> str:
        with self.log.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode("utf-8", errors="replace")

    @staticmethod
    def _parse(block: str) -> dict:
        timings = {}
        for name, pattern in _TIMING.items():
            match = re.findall(pattern, block)[-1]
            timings[name] = float(match[0] if isinstance(match, tuple) else match)
            if name == "prompt_eval_ms":
                timings["evaluated_tokens"] = int(match[1])
            if name == "eval_ms":
                timings["runs"] = int(match[1])
        hit = re.findall(r"(\d+) prefix-match hit, remaining (\d+) prompt tokens", block)
        timings["cached_tokens"] = int(hit[-1][0]) if hit else None  # llama-server: in its answer
        # The server's time to first token: the prompt, then one decode step.
        timings["server_ttft_ms"] = timings["prompt_eval_ms"] + timings["eval_ms"] / max(1, timings["runs"])
        return timings


class CountedRemote(RemoteBackend):
    """The remote backend, counting its generations and timing the last one."""

    generations = 0
    last_generate_ms = 0.0

    async def generate(self, request, on_chunk=None):
        self.generations += 1
        started = time.perf_counter()
        try:
            return await super().generate(request, on_chunk)
        finally:
            self.last_generate_ms = 1000 * (time.perf_counter() - started)


async def replay_remote(backend: CountedRemote, requests: list[CompletionRequest], timings: ServerTimings, cold: bool) -> list[dict]:
    rows = []
    for request in requests:
        if cold:  # the server's cache now holds an unrelated prompt
            await backend.generate(GenerationRequest(Role.SINGLE_LINE, 1, prompt_text=FLUSH))
            timings.next_request()
        calls = backend.generations
        started = time.perf_counter()
        completion = await complete(request, SETTINGS, backend)
        wall_ms = 1000 * (time.perf_counter() - started)
        if backend.generations != calls + 1:
            raise RuntimeError("a keystroke took two generations (a healed line start?); its server timings would not match")
        server = timings.next_request()
        if server["cached_tokens"] is None:
            server["cached_tokens"] = completion.stats.cached_tokens
        server["prompt_tokens"] = server["cached_tokens"] + server["evaluated_tokens"]
        rows.append({
            "ttft_s": completion.stats.ttft_s, "wall_ms": wall_ms, "text": completion.text,
            "client_overhead_ms": wall_ms - server["total_ms"],
            # Of that: the request over HTTP, the server's web layer and the stream, and the rest
            # of `complete` (the prompt, postprocess).
            "transport_ms": backend.last_generate_ms - server["total_ms"],
            "prompt_and_postprocess_ms": wall_ms - backend.last_generate_ms,
            **server,
        })  # fmt: skip
    return rows


async def replay_local(requests: list[CompletionRequest]) -> list[dict]:
    client = DaemonClient()
    backend = DaemonBackend(client)
    rows = []
    try:
        await complete(requests[0], SETTINGS, backend)  # loads the model; the replay starts warm
        for request in requests:
            started = time.perf_counter()
            completion = await complete(request, SETTINGS, backend)
            rows.append({"ttft_s": completion.stats.ttft_s, "wall_ms": 1000 * (time.perf_counter() - started), "text": completion.text,
                         "cached_tokens": completion.stats.cached_tokens, "prompt_tokens": completion.stats.prompt_tokens})
    finally:
        await client.close()
    return rows


def p50(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows if row[key] is not None)


async def run(args, server: ServerProcess, checkpoint: Path) -> dict:
    source = typed_file()
    requests = keystroke_requests(source.read_text(), args.start_line, args.keystrokes)
    # llama-server takes the prompt as token ids, and is sent them; llama-cpp-python's server takes text.
    ids = args.server == "llama-server"
    spec = ModelSpec(source=server.base_url, api_key_env=KEY_ENV, family="qwen2.5-coder", tokenizer=str(checkpoint), logprobs=False, send_token_ids=ids)
    backend = CountedRemote(spec)
    timings = ServerTimings(server.log)
    try:
        await complete(requests[0], SETTINGS, backend)  # the first request pays for loading the weights
        timings.next_request()
        cold = await replay_remote(backend, requests, timings, cold=True)
        print(f"remote cold: ttft p50 {p50(cold, 'ttft_s'):.3f} s", flush=True)
        warm = await replay_remote(backend, requests, timings, cold=False)
        print(f"remote warm: ttft p50 {p50(warm, 'ttft_s'):.3f} s", flush=True)
    finally:
        await backend.close()
    server.stop()  # the daemon gets the cores to itself
    local = await replay_local(requests)
    print(f"local warm: ttft p50 {p50(local, 'ttft_s'):.3f} s", flush=True)
    measured = warm[1:]  # the first warm keystroke follows the cold pass's last flush
    result = {
        "remote_cold_ttft_p50_s": p50(cold, "ttft_s"),
        "remote_warm_ttft_p50_s": p50(measured, "ttft_s"),
        "remote_cached_fraction": sum(r["cached_tokens"] for r in measured) / sum(r["prompt_tokens"] for r in measured),
        "client_overhead_ms_p50": p50(cold + measured, "client_overhead_ms"),
        "local_warm_ttft_p50_s": p50(local[1:], "ttft_s"),
        "server_ttft_p50_ms": {"cold": p50(cold, "server_ttft_ms"), "warm": p50(measured, "server_ttft_ms")},
        "client_overhead_ms_p90": statistics.quantiles([r["client_overhead_ms"] for r in cold + measured], n=10)[-1],
        "transport_ms_p50": p50(cold + measured, "transport_ms"),
        "prompt_and_postprocess_ms_p50": p50(cold + measured, "prompt_and_postprocess_ms"),
        "same_text_remote_and_local_fraction": statistics.mean(a["text"] == b["text"] for a, b in zip(warm, local)),
        "keystrokes": len(requests),
        "threads": args.threads,
        "cpu": cpu_model(),
        "server": f"{SERVERS[args.server]} (llama-cpp-python {LLAMA_CPP_VERSION}'s llama.cpp; OpenAI API over HTTP on 127.0.0.1), {args.threads} threads",
        "model": EMBEDDED_MODEL_NAME,
        "logprobs": False,
        "prompt_sent_as": "token ids" if ids else "text",
        "typed_file": f"requests/{source.name}, the first line of code from line {args.start_line + 1}",
    }
    result["goals"] = {
        "client_overhead_ms_p50 <= 15": result["client_overhead_ms_p50"] <= 15,
        "remote_warm_ttft_p50_s <= 0.2 * remote_cold_ttft_p50_s": result["remote_warm_ttft_p50_s"] <= 0.2 * result["remote_cold_ttft_p50_s"],
    }
    series = {"remote, cache reset": cold, "remote, server's prefix cache": warm, "local daemon": local}
    plot(RESULTS / f"{results_name(args.server)}.png", series, "Keystroke replay: a remote OpenAI-compatible server and the local daemon")
    return result


def replay_arguments(description: str) -> argparse.ArgumentParser:
    """The keystrokes typed and the server's threads, shared with server_http_overhead.py."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--keystrokes", type=int, default=24)
    parser.add_argument("--start-line", type=int, default=400)
    parser.add_argument("--threads", type=int, default=default_threads())
    return parser


SERVERS = {"llama-server": "llama.cpp's C++ llama-server", "llama-cpp-python": "llama-cpp-python's FastAPI server"}


def results_name(server: str) -> str:
    return "remote_replay" if server == "llama-server" else f"remote_replay_{server.replace('-', '_')}"


def start_server(kind: str, folder: Path, key: str, threads: int) -> ServerProcess:
    """The chosen server on the embedded model's GGUF, built for this CPU if need be, started."""
    gguf, log = embedded_gguf(folder), folder / "server.log"
    if kind == "llama-server":
        return NativeLlamaServer(gguf, key, log=log, threads=threads, binary=native_server_binary()).start()
    return LlamaServer(gguf, key, log=log, threads=threads, site=llama_cpp_site()).start()


def main() -> None:
    parser = replay_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=list(SERVERS), default="llama-server")
    args = parser.parse_args()

    checkpoint = ensure_embedded_checkpoint()
    with tempfile.TemporaryDirectory(prefix="fimble-remote-replay-") as tmp:
        os.environ[KEY_ENV] = os.urandom(8).hex()
        os.environ["FIMBLE_RUNTIME_DIR"] = str(Path(tmp) / "run")  # a daemon of the benchmark's own
        config = Path(tmp) / "config.toml"
        config.write_text(f"[models.single_line]\nthreads = {args.threads}\n")
        os.environ["FIMBLE_CONFIG"] = str(config)
        server = start_server(args.server, Path(tmp), os.environ[KEY_ENV], args.threads)
        try:
            result = asyncio.run(run(args, server, checkpoint))
        finally:
            server.stop()
            subprocess.run([sys.executable, "-m", "fimble", "daemon", "stop"], capture_output=True, timeout=60)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{results_name(args.server)}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
