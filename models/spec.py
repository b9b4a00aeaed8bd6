"""What to load and how: `ModelSpec`, and the roles that map request kinds to specs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

Quantization = Literal["none", "int8-weight-only", "int8-dynamic", "bnb-int8", "bnb-nf4"]
Attention = Literal["sdpa", "flash_attention_2"]
Device = Literal["auto", "cpu", "cuda"]

EMBEDDED = "embedded"


class Role(IntEnum):
    """Request kinds. The value orders their scheduling, lower first (models/scheduling.priority_for
    puts prefetches after every completion role and chat last)."""

    SINGLE_LINE = 0
    MULTI_LINE = 1
    CHAT = 2

    @property
    def config_name(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides which weights are loaded and how they run.

    Two roles with equal specs share one loaded model and one KV cache, so the spec is frozen
    and hashable.
    """

    # "embedded", a hub id such as "Qwen/Qwen2.5-Coder-1.5B", a local directory, or the base URL
    # of an OpenAI-compatible server ("https://host/v1"), which models/remote.py talks to.
    source: str = EMBEDDED
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # None picks the device's default: int8-weight-only on CPU, none (bf16) on GPU.
    quantization: Quantization | None = None
    attention: Attention = "sdpa"
    device: Device = "auto"
    context_length: int = 4096
    # CPU threads for torch; 0 keeps the measured default (see loading.default_threads).
    threads: int = 0
    # The model family (models/families.py); "" finds it from the model's tokenizer, config or name.
    family: str = ""
    # Remote servers only: the server's name for the model ("" takes the first it lists), the
    # environment variable holding the API key, a CA bundle for TLS, a local tokenizer (directory
    # or cached hub id) for exact token budgets, timeouts, and logprobs.
    model: str = ""
    api_key_env: str = ""
    ca_bundle: str = ""
    tokenizer: str = ""
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    # Ask the server for logprobs (abstaining needs them); llama-cpp-python's server spends about
    # 130 ms a token computing them (a Python sort over the vocabulary), so it can be turned off.
    logprobs: bool = True
    # Send the prompt as token ids from `tokenizer` instead of text, which saves the server
    # tokenizing it on each keystroke (llama-server: about 6 ms for a 1,700-token prompt). vLLM,
    # SGLang and llama.cpp's llama-server take ids; TGI, Ollama and llama-cpp-python's server don't.
    send_token_ids: bool = False

    def __post_init__(self) -> None:
        if self.context_length < 64:
            raise ValueError(f"context_length must be at least 64, got {self.context_length}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.send_token_ids and not self.tokenizer:
            raise ValueError("send_token_ids needs tokenizer: the model's tokenizer (a local directory or cached hub id) makes the ids")
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError(f"api_key_env names an environment variable, got {self.api_key_env!r}")

    @property
    def is_remote(self) -> bool:
        return self.source.startswith(("http://", "https://"))


@dataclass(frozen=True)
class RoleConfig:
    """Which spec serves each role. By default all three share the embedded model."""

    single_line: ModelSpec = field(default_factory=ModelSpec)
    multi_line: ModelSpec = field(default_factory=ModelSpec)
    chat: ModelSpec = field(default_factory=ModelSpec)

    def spec_for(self, role: Role) -> ModelSpec:
        return getattr(self, role.config_name)
