"""The real thing: `fimble lsp` with the embedded Qwen2.5-Coder-0.5B behind the daemon, and once
with the 1.5B (the `1.5b` extra, which the test extra installs) as the single-line model."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest
from lsprotocol import types

from tests.lsp_server.conftest import FIMBLE, inline_at, open_document, start_client
from tests.models.test_embedded import fibonacci_with

FIB = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n    return \n\n\nprint(fibonacci(10))\n'


@pytest.fixture
def embedded_env(tmp_path, embedded_model_cache):
    # No config file: every role is the embedded model, converted once into the test suite's cache.
    yield from daemon_env(tmp_path / "absent.toml", embedded_model_cache)


def daemon_env(config, model_cache):
    with tempfile.TemporaryDirectory(prefix="fimble-emb-") as runtime:
        env = dict(os.environ, FIMBLE_CONFIG=str(config), FIMBLE_RUNTIME_DIR=runtime, FIMBLE_CACHE_DIR=str(model_cache))
        yield env
        subprocess.run([*FIMBLE, "daemon", "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def embedded_15b_env(tmp_path, embedded_model_cache):
    config = tmp_path / "config.toml"
    config.write_text('[models.single_line]\nsource = "embedded-1.5b"\n')
    yield from daemon_env(config, embedded_model_cache)


@pytest.mark.slow
async def test_ghost_text_from_the_embedded_model(embedded_env):
    # No latency budget: this checks the model's words, and a cold first answer on a busy machine
    # can take past 2.5 s, which would show a draft cut mid-line (CI saw "fibonacci(n -").
    client = await start_client(embedded_env, initialization_options={"maxDebounceMs": 0, "maxLatencyMs": 0})
    try:
        open_document(client, "file:///work/fib.py", FIB)
        single = await inline_at(client, "file:///work/fib.py", 4, 11)
        (item,) = single.items
        # The quantized model's exact words differ between CPUs: check what the line does.
        offset = FIB.index("return \n") + len("return ")
        assert fibonacci_with(FIB, offset, item.insert_text)(10) == 55

        body = "def count_vowels(text):\n    \n"
        open_document(client, "file:///work/vowels.py", body)
        multi = await inline_at(client, "file:///work/vowels.py", 1, 4, invoked=True)
        (item,) = multi.items
        lines = item.insert_text.splitlines()
        assert len(lines) >= 2 and "return" in item.insert_text
        # The body parses: the file with the completion inserted compiles.
        compile(body.replace("    \n", "    " + item.insert_text + "\n"), "vowels.py", "exec")
        assert item.range.start == types.Position(1, 4)
    finally:
        await client.shutdown_session()
        await client.stop()


@pytest.mark.slow
async def test_ghost_text_from_the_embedded_15b_model(embedded_15b_env):
    # Its first use converts the 22 parts (about 80 s here) and quantizes them (once, then cached).
    client = await start_client(embedded_15b_env, initialization_options={"maxDebounceMs": 0, "maxLatencyMs": 0})
    try:
        open_document(client, "file:///work/fib.py", FIB)
        (item,) = (await inline_at(client, "file:///work/fib.py", 4, 11)).items
        offset = FIB.index("return \n") + len("return ")
        assert fibonacci_with(FIB, offset, item.insert_text)(10) == 55
    finally:
        await client.shutdown_session()
        await client.stop()
    status = subprocess.run([*FIMBLE, "daemon", "status"], env=embedded_15b_env, capture_output=True, text=True, timeout=60)
    single_line = next(line for line in status.stdout.splitlines() if line.startswith("single_line"))
    assert "Qwen2.5-Coder-1.5B-Instruct" in single_line, status.stdout
