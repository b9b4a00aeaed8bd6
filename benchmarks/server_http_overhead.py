"""How much of remote_replay's `transport_ms` is the server's own web layer: the same warm keystroke
prompts (benchmarks/remote_replay.py's) sent by httpx, as Fimble's remote backend sends them, and
by curl, a client with next to no cost of its own, to each server in turn: llama.cpp's C++
llama-server and llama-cpp-python's FastAPI server. For each request the figure is the wall time
minus the server's own "total time" line (llama.cpp's timings, which leave out the web layer).

    python benchmarks/server_http_overhead.py     # writes benchmarks/results/server_http_overhead.json
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.keystroke_replay import RESULTS, typed_file  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.remote_replay import SERVERS, ServerTimings, keystroke_requests, replay_arguments, start_server  # noqa: E402
from fimble.completion.prompt import FimBudget, build_fim_prompt_around  # noqa: E402
from fimble.models.embedded import ensure_embedded_checkpoint  # noqa: E402
from tests.llama_server import ServerProcess  # noqa: E402


def bodies(checkpoint: Path, keystrokes: int, start_line: int) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    requests = keystroke_requests(typed_file().read_text(), start_line, keystrokes)
    return [
        {
            "model": "m",
            "prompt": build_fim_prompt_around(r.prefix, r.suffix, tokenizer, FimBudget(), token_ids=False).text,
            "max_tokens": 48,
            "temperature": 0,
            "stream": True,
            "stop": ["\n"],
        }
        for r in requests
    ]


async def with_httpx(server: ServerProcess, key: str, requests: list[dict], timings: ServerTimings) -> tuple[list[float], int]:
    """The overhead of each request, and how many were sent again: like Fimble's remote backend,
    a request on a kept-alive connection that the server closed unanswered goes out again at once."""
    overheads, resent = [], 0
    async with httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        for body in requests:
            started = time.perf_counter()
            try:
                await stream_through(client, body)
            except httpx.RemoteProtocolError:
                resent += 1
                await stream_through(client, body)
            overheads.append((time.perf_counter() - started) * 1000 - timings.next_request()["total_ms"])
    return overheads, resent


async def stream_through(client: httpx.AsyncClient, body: dict) -> None:
    async with client.stream("POST", "/completions", json=body) as response:
        async for _ in response.aiter_lines():
            pass


def with_curl(server: ServerProcess, key: str, requests: list[dict], timings: ServerTimings, folder: Path) -> list[float]:
    overheads = []
    for body in requests:
        path = folder / "body.json"
        path.write_text(json.dumps(body))
        command = ["curl", "-sSN", "-o", "/dev/null", "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json"]
        started = time.perf_counter()
        subprocess.run([*command, "--data-binary", f"@{path}", f"{server.base_url}/completions"], check=True)
        overheads.append((time.perf_counter() - started) * 1000 - timings.next_request()["total_ms"])
    return overheads


def measure(kind: str, requests: list[dict], folder: Path, key: str, threads: int) -> dict:
    server = start_server(kind, folder, key, threads)
    try:
        timings = ServerTimings(server.log)
        asyncio.run(with_httpx(server, key, requests, timings))  # fills the server's prefix cache
        httpx_ms, resent = asyncio.run(with_httpx(server, key, requests, timings))
        curl_ms = with_curl(server, key, requests, timings, folder)
    finally:
        server.stop()
    return {
        "server": SERVERS[kind],
        "httpx_minus_server_total_ms_p50": statistics.median(httpx_ms),
        "curl_minus_server_total_ms_p50": statistics.median(curl_ms),
        "httpx_over_curl_ms_p50": statistics.median(h - c for h, c in zip(httpx_ms, curl_ms)),
        "httpx_requests_sent_again": resent,
    }


def main() -> None:
    args = replay_arguments(__doc__.split("\n\n")[0]).parse_args()
    checkpoint = ensure_embedded_checkpoint()
    key = os.urandom(8).hex()
    requests = bodies(checkpoint, args.keystrokes, args.start_line)
    result = {}
    for kind in SERVERS:
        with tempfile.TemporaryDirectory(prefix="fimble-http-overhead-") as tmp:
            result[kind] = measure(kind, requests, Path(tmp), key, args.threads)
            print(kind, json.dumps(result[kind]), flush=True)
    result.update(keystrokes=len(requests), threads=args.threads, cpu=cpu_model())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "server_http_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
