"""The generation contract: what completion and chat ask any backend for, and what comes back.

    GenerationRequest ──> backend (the daemon's engine, an engine in this process, a remote
                          OpenAI-compatible server) ──> GenerationChunk* ──> GenerationResult

One set of types from the editor's process down to the engine: the daemon's wire format is these
dataclasses unstructured by cattrs (models/wire.py), so nothing is re-spelled per hop. Stop rules
travel as data (`StopRules`) to whoever generates the tokens, and are applied there
(models/stopping.py), so a request stops where its tokens are made, not after a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fimble.models.spec import Role

# stop_token: the model ended (EOS or a stop token); stop_string: a stop string or the block end
# matched; length: max_new_tokens; cancelled: the caller stopped it; error: it failed (`error` says why).
FinishReason = Literal["stop_token", "stop_string", "length", "cancelled", "error"]


@dataclass(frozen=True)
class BlockEnd:
    """Multi-line completions end where the generated code leaves the cursor's block: at a line
    indented less than the block's first line, or at a line that repeats the next line of code
    below the cursor (models.stopping.block_has_ended)."""

    healed: str = ""  # line-start healing: text the model writes first that is not shown
    typed_indent: int = 0  # the indentation the user typed before the cursor on its line
    next_code_line: str = ""  # the first non-blank line below the cursor's line, right-stripped


@dataclass(frozen=True)
class StopRules:
    token_ids: tuple[int, ...] = ()  # ids that end generation (the model family's EOS and FIM tokens)
    strings: tuple[str, ...] = ()
    # Stop strings match only after the output's first non-whitespace character: a healed line
    # start (completion/prompt.py) begins with the "\n" that a single-line stop string would catch.
    after_text: bool = False
    block_end: BlockEnd | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. Local engines read `prompt_ids`; a remote server gets `prompt_text` for
    completions and `messages` for chat (it applies the model's chat template itself)."""

    role: Role
    max_new_tokens: int
    prompt_ids: tuple[int, ...] = ()
    prompt_text: str = ""
    messages: tuple[ChatMessage, ...] = ()
    stop: StopRules = StopRules()
    # A prefetch (the completion after an accepted one): it runs after every completion a user waits for.
    background: bool = False
    # Answers wanted: the greedy one, and up to `candidates - 1` others, each the greedy continuation
    # of one of the next-best first tokens (GenerationResult.alternatives). Local engines only: a
    # remote server answers with one.
    candidates: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise ValueError(f"candidates must be from 1 to {MAX_CANDIDATES}, got {self.candidates}")


MAX_CANDIDATES = 8


@dataclass(frozen=True)
class TokenChoice:
    token_id: int
    logprob: float


@dataclass(frozen=True)
class GenerationChunk:
    """Text streamed as it is generated; the chunks of a request add up to its result's text."""

    text: str


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, served from the prefix cache
    generated_tokens: int = 0
    ttft_s: float | None = None
    decode_tok_s: float | None = None
    total_s: float = 0.0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    stats: GenerationStats = GenerationStats()
    token_ids: tuple[int, ...] = ()  # empty where the backend does not report them (remote)
    logprobs: tuple[float, ...] = ()  # of the generated tokens; empty where the server gives none
    error: str | None = None
    # The other answers asked for (GenerationRequest.candidates), in the order of their first
    # tokens' logprobs; each one's first token is its branch point. Fewer where the next-best first
    # tokens end the answer at once (a stop token or stop string).
    alternatives: tuple[GenerationResult, ...] = ()

    @property
    def mean_logprob(self) -> float | None:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else None


@dataclass(frozen=True)
class ModelInfo:
    """What a backend says about the model serving a role, before any generation."""

    name: str
    family: str  # a key of models.families.FAMILIES
    context_length: int
    chat_template: str = ""  # the model's jinja template; "" when it has none or the server applies it
    # A remote server: it takes prompts as text (completions) and messages (chat, applying the
    # model's template itself), so no token ids are sent.
    takes_text: bool = False
    tokenizer_json: str = ""  # the model's tokenizer.json; "" when it is not known here (remote)
    logprobs: bool = True  # whether results carry logprobs (abstaining needs them)
    warnings: tuple[str, ...] = field(default=())


class BackendError(RuntimeError):
    """A backend cannot serve a request (a bad config, a model that failed to load, a server that
    refused it); the message says what to change."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The daemon or the server cannot be reached right now (it died, it is restarting, it is down);
    the next request tries again."""
