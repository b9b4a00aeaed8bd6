"""Fixtures for end-to-end LSP tests: the real `fimble lsp` and the real daemon, with tiny models.

single_line and chat use the tiny random-weight model. multi_line uses a copy that writes "x" after
any prompt, forever: no line break, no stop token. That makes a request that runs until it is
cancelled, for the cancellation and daemon-death tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncio

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities
from pytest_lsp.client import make_test_lsp_client

from fimble.models.config import load_role_config
from fimble.models.daemon_client import DaemonClient
from fimble.models.pool import EnginePool

FIMBLE = [sys.executable, "-m", "fimble"]
# Every answer of the model, whole: no abstaining, no debounce, and no latency budget (on a busy
# machine the tiny model's line can take past 2.5 s, and came back as a draft cut after a word).
QUIET = {"abstainBelowLogprob": None, "maxDebounceMs": 0, "maxLatencyMs": 0}


def build_never_stopping_checkpoint(tiny_checkpoint: Path, path: Path) -> Path:
    """The tiny model rewired so that the last hidden state is the same positive vector for every
    input (the layers add nothing to the embeddings, which all point one way, and the final norm
    keeps one dimension), and only the "x" row of the output head sees it: "x" always wins."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(tiny_checkpoint, path)
    weights = load_file(path / "model.safetensors")
    for name, tensor in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensor.zero_()
    weights["model.embed_tokens.weight"][:, 0] = 1.0
    weights["model.norm.weight"].zero_()
    weights["model.norm.weight"][0] = 1.0
    head = weights["lm_head.weight"]
    head.zero_()
    head[AutoTokenizer.from_pretrained(tiny_checkpoint).convert_tokens_to_ids("x"), 0] = 1.0
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def write_config(path: Path, single_line: Path, multi_line: Path, threads: int = 0) -> Path:
    """`threads` 0 keeps torch's default; 1 is faster on a busy machine (see write_tiny_config)."""
    sources = {"single_line": single_line, "multi_line": multi_line, "chat": single_line}
    path.write_text(
        "".join(
            f'[models.{role}]\nsource = "{source}"\nquantization = "none"\ndevice = "cpu"\ncontext_length = 2048\nthreads = {threads}\n\n'
            for role, source in sources.items()
        )
    )
    return path


@pytest.fixture(scope="session")
def fimble_env(tiny_checkpoint, tmp_path_factory):
    """One daemon for the session's LSP tests (each test starts its own `fimble lsp`)."""
    root = tmp_path_factory.mktemp("fimble")
    never_stopping = build_never_stopping_checkpoint(tiny_checkpoint, root / "never-stopping")
    config = write_config(root / "config.toml", tiny_checkpoint, never_stopping)
    # A short directory of its own: AF_UNIX socket paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="fimble-lsp-") as runtime_dir:
        env = dict(os.environ, FIMBLE_CONFIG=str(config), FIMBLE_RUNTIME_DIR=runtime_dir, FIMBLE_CACHE_DIR=str(root / "cache"))
        env["FIMBLE_DAEMON_IDLE_S"] = "120"
        env["FIMBLE_DATA_DIR"] = str(root / "data")  # chat sessions
        yield env
        subprocess.run([*FIMBLE, "daemon", "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def local_pool(fimble_env):
    """The same models, loaded in this process, for the expected answers."""
    import os

    old = os.environ.get("FIMBLE_CONFIG")
    os.environ["FIMBLE_CONFIG"] = fimble_env["FIMBLE_CONFIG"]
    try:
        pool = EnginePool(load_role_config())
    finally:
        os.environ.pop("FIMBLE_CONFIG") if old is None else os.environ.__setitem__("FIMBLE_CONFIG", old)
    yield pool
    pool.close()


@pytest.fixture
def in_fimble_env(fimble_env, monkeypatch):
    """This process talks to the session's daemon too (DaemonClient reads the environment)."""
    for key in ("FIMBLE_CONFIG", "FIMBLE_RUNTIME_DIR", "FIMBLE_CACHE_DIR"):
        monkeypatch.setenv(key, fimble_env[key])
    return fimble_env


def capabilities_of(editor: str, inline_completion: bool) -> types.ClientCapabilities:
    """A real editor's recorded capabilities (pytest-lsp ships them), with or without inline completion."""
    capabilities = client_capabilities(editor)
    capabilities.text_document.inline_completion = types.InlineCompletionClientCapabilities() if inline_completion else None
    return capabilities


async def start_client(env: dict, initialization_options=QUIET, inline_completion: bool = True, root: Path | None = None) -> LanguageClient:
    client = make_test_lsp_client()
    await client.start_io(*FIMBLE, "lsp", env=env)
    client.initialize_result = await client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities_of("visual-studio-code", inline_completion),
            initialization_options=initialization_options,
            process_id=os.getpid(),
            root_uri=root.as_uri() if root else None,
        )
    )
    return client


@pytest_asyncio.fixture
async def lsp(fimble_env):
    client = await start_client(fimble_env)
    yield client
    await client.shutdown_session()
    await client.stop()


def open_document(client: LanguageClient, uri: str, text: str, language_id: str = "python", version: int = 1) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=version, text=text))
    )


async def inline_at(client: LanguageClient, uri: str, line: int, character: int, invoked: bool = False):
    kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=kind),
        )
    )


# --- long-running requests: the never-stopping multi_line model ------------------------------------

EMPTY_BODY = "def compute(values):\n    \n"
LONG = {**QUIET, "maxMultiLineTokens": 1800}


def multi_line_request(uri: str) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(1, 4),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )


async def role_status(daemon: DaemonClient, role: str) -> dict:
    return (await daemon.status())["roles"][role]


async def multi_line_status(daemon: DaemonClient) -> dict:
    return await role_status(daemon, "multi_line")


async def wait_until(predicate, daemon: DaemonClient, timeout_s: float = 60.0, role: str = "multi_line") -> dict:
    """The role's status in the daemon once it is ready and `predicate(status)` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        status = await role_status(daemon, role)
        if status["state"] == "ready" and predicate(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"daemon status never satisfied the condition: {status}")


@pytest.fixture
async def long_lsp(fimble_env):
    """A server allowed to write very long multi-line completions (the never-stopping model)."""
    client = await start_client(fimble_env, initialization_options=LONG)
    yield client
    await client.shutdown_session()
    await client.stop()


@pytest.fixture
async def daemon(in_fimble_env):
    client = DaemonClient()
    await client.connect()
    yield client
    await client.close()
