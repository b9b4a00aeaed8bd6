"""Shared fixtures: a tiny random-weight Qwen2 checkpoint with a real byte-level BPE tokenizer,
written to disk and loaded through the same code path as any local model; and the directories
the tests run in, none of them the user's."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from fimble.models.engine import Engine, EngineConfig
from fimble.models.loading import load_model
from fimble.models.spec import ModelSpec
from tests.llama_server import LlamaServer, embedded_gguf, llama_cpp_site

# --- the user's directories are never touched ------------------------------------------------

_RUN_ROOT: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Point every directory Fimble uses (fimble/dirs.py), and the XDG directories behind
    platformdirs' defaults, into one temporary folder for the whole run. Set before any test runs,
    so every process a test starts inherits it too. A test that needs its own directory sets it."""
    global _RUN_ROOT
    # Tools the tests build once per machine (tests/llama_server.py), in the cache dir the user had.
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ.setdefault("FIMBLE_TEST_TOOLS", str(cache_home / "fimble-test-tools"))
    # Short and in /tmp: the daemon's socket path must stay under AF_UNIX's 108 bytes.
    _RUN_ROOT = Path(tempfile.mkdtemp(prefix="fimble-t-"))
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        os.environ[name] = str(_RUN_ROOT / "xdg" / name.removeprefix("XDG_").removesuffix("_HOME").lower())
    os.environ["FIMBLE_CACHE_DIR"] = str(_RUN_ROOT / "cache")
    os.environ["FIMBLE_DATA_DIR"] = str(_RUN_ROOT / "data")
    os.environ["FIMBLE_CONFIG"] = str(_RUN_ROOT / "config.toml")  # absent: every role is the embedded model
    os.environ["FIMBLE_RUNTIME_DIR"] = str(_RUN_ROOT / "run")
    # No standby daemon (models/standby.py) beside each test's daemon: its torch import would
    # take a core for 6 s each time. tests/models/test_standby.py turns it on.
    os.environ["FIMBLE_DAEMON_STANDBY"] = "0"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RUN_ROOT is not None:
        shutil.rmtree(_RUN_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_model_cache(pytestconfig: pytest.Config) -> Path:
    """A cache dir of the test suite's own (in .pytest_cache) for the slow tests: the embedded
    model is converted into it once and reused by later runs, never in the user's cache."""
    return pytestconfig.cache.mkdir("fimble-model-cache")


@pytest.fixture
def embedded_cache(embedded_model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test, and the processes it starts, find the embedded model in the test suite's cache."""
    monkeypatch.setenv("FIMBLE_CACHE_DIR", str(embedded_model_cache))
    return embedded_model_cache


@pytest.fixture(scope="session")
def llama_server(embedded_model_cache: Path, tmp_path_factory) -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 with the embedded GGUF, its key in
    the environment variable REMOTE_KEY_ENV (built on first use: tests/llama_server.py)."""
    site = llama_cpp_site(progress=lambda message: print(f"\nfimble tests: {message}", flush=True))
    key = "test-key-" + os.urandom(8).hex()
    os.environ[REMOTE_KEY_ENV] = key
    server = LlamaServer(embedded_gguf(embedded_model_cache), key, site=site, log=tmp_path_factory.mktemp("llama") / "server.log")
    yield server.start()
    server.stop()


REMOTE_KEY_ENV = "FIMBLE_TEST_REMOTE_KEY"


# --- the tiny model ---------------------------------------------------------------------------

TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
CORPUS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Client:\n    def get(self, url):\n        return self.session.request('GET', url)\n",
    "import os\nfor name in os.listdir('.'):\n    print(name)\n",
]

# Qwen2.5's chat template (as its instruct checkpoints ship it), so the tiny model can serve chat.
QWEN25_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=TINY_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    fast.chat_template = QWEN25_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=fast.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def write_tiny_config(path: Path, checkpoint: Path, roles=("single_line", "multi_line", "chat")) -> Path:
    """A config.toml with each role on the tiny checkpoint, fp32, on one torch thread: its ops are
    too small to split, and two threads spin-waiting on two busy cores took ~100 ms a step (a
    4-token generation: 351 ms with two threads, 4.6 ms with one, side by side under load)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(f'[models.{role}]\nsource = "{checkpoint}"\nquantization = "none"\ndevice = "cpu"\ncontext_length = 2048\nthreads = 1\n\n' for role in roles)
    )
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_checkpoint) -> ModelSpec:
    # fp32 without quantization: exactness tests compare against the plain model.
    return ModelSpec(source=str(tiny_checkpoint), quantization="none", device="cpu", context_length=2048)


@pytest.fixture
def tiny_loaded(tiny_spec):
    return load_model(tiny_spec)


@pytest.fixture
def make_engine(tiny_loaded):
    engines: list[Engine] = []

    def make(**config) -> Engine:
        engine = Engine(tiny_loaded, EngineConfig(**config))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()
