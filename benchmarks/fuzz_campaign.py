"""The full fuzzing campaign of issue 18: hypothesis cases against a real `fimble lsp` over stdio and
a real daemon's socket, both on the tiny random-weight model, with the properties of
tests/lsp_server/stdio_fuzz.py and tests/models/socket_fuzz.py checked after every case.

    python benchmarks/fuzz_campaign.py                      # 10,000 cases a surface (~1 h here)
    python benchmarks/fuzz_campaign.py --cases 500          # a quick look

Runs go in chunks of 500 examples, each with its own seed. A failing chunk is recorded (the case
hypothesis shrank it to, and what broke), its process is restarted, and the campaign goes on, so
one bug does not hide the next. Writes the fuzz figures into benchmarks/results/reliability.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reliability_results import record  # noqa: E402
from tests.conftest import build_tiny_checkpoint  # noqa: E402
from tests.lsp_server.conftest import build_never_stopping_checkpoint, write_config  # noqa: E402
from tests.lsp_server.stdio_fuzz import RawServer, ServerDied, Unanswered, cases, requests, run_case  # noqa: E402
from tests.models.socket_fuzz import DaemonDied, FuzzedDaemon, InternalError, NotAnswered, run_socket_case, socket_cases  # noqa: E402

CHUNK = 500
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@dataclass
class Tally:
    cases: int = 0
    requests: int = 0
    crashes: int = 0
    unanswered: int = 0
    internal_errors: int = 0  # answered, but with a traceback in the log
    other_failures: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, error: BaseException, chunk_seed: int) -> None:
        """Record the failure a chunk stopped at (hypothesis's report carries the drawn case)."""
        if isinstance(error, (ServerDied, DaemonDied)):
            self.crashes += 1
        elif isinstance(error, (Unanswered, NotAnswered)):
            self.unanswered += 1
        elif isinstance(error, InternalError):
            self.internal_errors += 1
        else:
            self.other_failures += 1
        self.failures.append({"seed": chunk_seed, "error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exception(error)[-3:]})


def run_chunks(name: str, total: int, tally: Tally, start: Callable, one_case: Callable, strategy: Callable, stop: Callable) -> None:
    """`total` examples in chunks; `start()` makes the process under test, `one_case(target, drawn)`
    checks one drawn case and returns its request count."""
    target = start()
    started = time.monotonic()
    try:
        for chunk_seed in range(0, total, CHUNK):
            examples = min(CHUNK, total - chunk_seed)

            # No shrinking: a failure that is a timeout would cost one timeout per shrink step.
            @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
            @seed(chunk_seed)
            @given(data=st.data())
            def chunk(data):
                tally.requests += one_case(target, data.draw(strategy(target)))
                tally.cases += 1

            try:
                chunk()
            except Exception as error:  # noqa: BLE001 - recorded; the campaign goes on
                tally.count(error, chunk_seed)
                print(f"{name}: chunk {chunk_seed} failed: {error}", flush=True)
                stop(target)
                target = start()
            print(f"{name}: {tally.cases} cases, {tally.requests} requests, {tally.crashes} crashes, {tally.unanswered} unanswered, {time.monotonic() - started:.0f} s", flush=True)
    finally:
        stop(target)
        tally.seconds = round(tally.seconds + time.monotonic() - started, 1)


def lsp_env(root: Path, runtime: str) -> dict:
    tiny = build_tiny_checkpoint(root / "tiny")
    config = write_config(root / "config.toml", tiny, build_never_stopping_checkpoint(tiny, root / "never-stopping"), threads=1)
    return dict(os.environ, FIMBLE_CONFIG=str(config), FIMBLE_RUNTIME_DIR=runtime, FIMBLE_CACHE_DIR=str(root / "cache"), FIMBLE_DATA_DIR=str(root / "data"), FIMBLE_DAEMON_IDLE_S="600")


def _initialized(env: dict) -> RawServer:
    server = RawServer(env)
    server.initialize()
    return server


def _shut_down(env: dict) -> RawServer:
    server = _initialized(env)
    server.wait_for([server.request("shutdown")])
    return server


def _refused(code: int) -> Callable:
    def check(server: RawServer, request) -> int:
        request_id = server.request(*request)
        answer = server.wait_for([request_id])[request_id]
        if answer.get("error", {}).get("code") not in (code, -32602):
            raise AssertionError(f"expected error {code} or -32602, got {answer}")
        return 1

    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000, help="cases per surface (stdio's are split: 80%% initialized, 10%% before initialize, 10%% after shutdown)")
    arguments = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fimble-fuzz-"))
    with tempfile.TemporaryDirectory(prefix="fimble-fz-") as runtime:
        env = lsp_env(root, runtime)
        stdio = Tally()
        lifetime = max(1, arguments.cases // 10)
        close = RawServer.close
        run_chunks("stdio", arguments.cases - 2 * lifetime, stdio, lambda: _initialized(env), run_case, cases, close)
        run_chunks("before initialize", lifetime, stdio, lambda: RawServer(env), _refused(-32002), lambda server: requests(), close)
        run_chunks("after shutdown", lifetime, stdio, lambda: _shut_down(env), _refused(-32600), lambda server: requests(), close)
    socket = Tally()
    run_chunks("socket", arguments.cases, socket, lambda: FuzzedDaemon(root / "tiny", root / "daemon"), run_socket_case, lambda daemon: socket_cases(daemon.vocab_size), FuzzedDaemon.close)

    surfaces = {"lsp_stdio": stdio, "daemon_socket": socket}
    figures = {
        "fuzz_cases": stdio.cases + socket.cases,
        "crashes": stdio.crashes + socket.crashes,
        "unanswered_requests": stdio.unanswered + socket.unanswered,
    }
    details = {name: vars(tally) for name, tally in surfaces.items()} | {"model": "tiny random-weight checkpoint (tests/conftest.py)", "cases_per_surface": arguments.cases}
    record("fuzz", figures, command=f"python benchmarks/fuzz_campaign.py --cases {arguments.cases}", details=details)
    print(figures)


if __name__ == "__main__":
    main()
