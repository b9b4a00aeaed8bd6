"""The completion path, keystroke to ghost text, as plain logic over a model backend:

    decide_mode -> build_fim_prompt_around -> backend.generate -> strip_healed -> postprocess -> abstain

The backend is the daemon's socket in the editor (completion/backends.DaemonBackend) and an
in-process engine for `fimble complete` (EngineBackend); both run the same code here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from fimble.completion.postprocess import cut_where_code_below_resumes, postprocess
from fimble.completion.prompt import FimBudget, FimPrompt, Tokenizer, build_fim_prompt_around, strip_healed
from fimble.completion.trigger import CompletionMode, decide_mode
from fimble.models.spec import Role

ROLE_FOR_MODE = {CompletionMode.SINGLE_LINE: Role.SINGLE_LINE, CompletionMode.MULTI_LINE: Role.MULTI_LINE}


@dataclass(frozen=True)
class CompletionSettings:
    multi_line: bool = True
    # Nothing is shown when the mean token logprob is below this; None shows everything.
    abstain_below_logprob: float | None = -1.0
    max_single_line_tokens: int = 48
    max_multi_line_tokens: int = 160
    budget: FimBudget = FimBudget()
    # Repository context in front of the FIM prompt (context/retrieve.py); 0 turns it off.
    context_tokens: int = 1024


@dataclass(frozen=True)
class CompletionRequest:
    text: str
    offset: int  # code points before the cursor
    language_id: str = "python"
    explicit: bool = False  # invoked by the user rather than by typing

    @property
    def prefix(self) -> str:
        return self.text[: self.offset]

    @property
    def suffix(self) -> str:
        return self.text[self.offset :]


@dataclass(frozen=True)
class Generated:
    text: str
    mean_logprob: float | None
    finish_reason: str
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    text: str  # inserted at the cursor; "" when there is nothing to show
    mode: CompletionMode
    mean_logprob: float | None = None
    # Why the text is empty: "trigger", "abstained", "postprocess", "model"; "" when there is text.
    empty_because: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    context_files: tuple[str, ...] = ()  # the other files whose code was in the prompt


# Given the tokenizer (to count the budget) and the budget, the repository context for the cursor.
ContextSource = Callable[[Tokenizer, int], str]


@dataclass(frozen=True)
class GenerationCall:
    """What the service asks a backend for."""

    role: Role
    prompt_ids: list[int]
    max_new_tokens: int
    stop_strings: tuple[str, ...] = ()
    stop_after_text: bool = False  # see GenerationRequest.stop_after_text
    # Checked against the text so far; True stops the request and keeps that text.
    should_stop: Callable[[str], bool] | None = None


class Backend(Protocol):
    async def tokenizer(self, role: Role) -> Tokenizer: ...

    async def generate(self, call: GenerationCall) -> Generated: ...


# Only this much text around the cursor is looked at. The prompt holds far less, but finding it
# means tokenizing and parsing; on a 100,000-line file that would happen on every keystroke.
MAX_PREFIX_LINES = 2048
MAX_SUFFIX_LINES = 256
MAX_SIDE_CHARS = 200_000
# The prefix is cut at a multiple of this many lines, so the cut (and the cached prompt) stays put
# while the user types; it matches FimBudget.window_step_lines.
CUT_STEP_LINES = 32


def clip_around_cursor(request: CompletionRequest) -> CompletionRequest:
    """The request with its text cut to a window around the cursor (a no-op for normal files)."""
    prefix, suffix = request.prefix, request.suffix
    lines_before = prefix.count("\n")
    if lines_before > MAX_PREFIX_LINES:
        cut_line = (lines_before - MAX_PREFIX_LINES) // CUT_STEP_LINES * CUT_STEP_LINES
        start = 0
        for _ in range(cut_line):
            start = prefix.index("\n", start) + 1
        prefix = prefix[start:]
    prefix = prefix[-MAX_SIDE_CHARS:]  # one giant line (minified code): keep its tail
    end = 0
    for _ in range(MAX_SUFFIX_LINES):
        end = suffix.find("\n", end) + 1
        if end == 0:
            end = len(suffix)
            break
    suffix = suffix[: min(end, MAX_SIDE_CHARS)]
    if len(prefix) == len(request.prefix) and len(suffix) == len(request.suffix):
        return request
    return CompletionRequest(prefix + suffix, len(prefix), request.language_id, request.explicit)


async def complete(
    request: CompletionRequest, settings: CompletionSettings, backend: Backend, context_source: ContextSource | None = None
) -> Completion:
    request = clip_around_cursor(request)
    mode = decide_mode(request.prefix, request.suffix, request.language_id, request.explicit)
    if mode == CompletionMode.MULTI_LINE and not settings.multi_line:
        mode = CompletionMode.SINGLE_LINE
    if mode == CompletionMode.NONE:
        return Completion("", mode, empty_because="trigger")
    role = ROLE_FOR_MODE[mode]
    tokenizer = await backend.tokenizer(role)
    context = ""
    if context_source is not None and settings.context_tokens > 0:
        # Retrieval parses and tokenizes: keep it off the event loop that serves keystrokes.
        context = await asyncio.to_thread(context_source, tokenizer, settings.context_tokens)
    prompt = build_fim_prompt_around(request.prefix, request.suffix, tokenizer, settings.budget, context)
    generated = await backend.generate(generation_call(prompt, mode, request, settings))
    if prompt.healed and generated.finish_reason != "error" and not generated.text.startswith("\n"):
        # Asked to start the cursor's line, the model went on with the line above ("0", "= []").
        # That text doesn't belong at the cursor: ask again with the plain prompt, which shares
        # all but its last token with this one in the prefix cache. On HumanEval single-line,
        # 25 of 1,033 tasks took this path, and their healed answers all failed.
        prompt = build_fim_prompt_around(request.prefix, request.suffix, tokenizer, settings.budget, context, heal=False)
        generated = await backend.generate(generation_call(prompt, mode, request, settings))
    if generated.finish_reason == "error":
        return Completion("", mode, generated.mean_logprob, "model", generated.stats)
    files = context_files(context)
    raw = without_control_characters(strip_healed(generated.text, prompt.healed))
    text = postprocess(raw, request.prefix, request.suffix, mode, request.language_id)
    # A completion the user asked for is shown even when the model is unsure.
    threshold = None if request.explicit else settings.abstain_below_logprob
    if text and threshold is not None and generated.mean_logprob is not None and generated.mean_logprob < threshold:
        return Completion("", mode, generated.mean_logprob, "abstained", generated.stats, files)
    return Completion(text, mode, generated.mean_logprob, "" if text else "postprocess", generated.stats, files)


def generation_call(prompt: FimPrompt, mode: CompletionMode, request: CompletionRequest, settings: CompletionSettings) -> GenerationCall:
    single = mode == CompletionMode.SINGLE_LINE
    return GenerationCall(
        ROLE_FOR_MODE[mode],
        prompt.token_ids,
        settings.max_single_line_tokens if single else settings.max_multi_line_tokens,
        # Single-line: the engine stops at the first line break after some text.
        stop_strings=("\n",) if single else (),
        stop_after_text=bool(prompt.healed),
        should_stop=None if single else block_end_detector(prompt.healed, request.prefix, request.suffix),
    )


def context_files(context: str) -> tuple[str, ...]:
    """The files a repository context quotes (every <|file_sep|> but the last, the current file)."""
    paths = [block.split("\n", 1)[0] for block in context.split("<|file_sep|>")[1:]]
    return tuple(paths[:-1])


def without_control_characters(text: str) -> str:
    """Editors cut ghost text at a NUL and render other C0 controls as garbage; code never needs them."""
    return text.translate(_CONTROL_CHARACTERS)


_CONTROL_CHARACTERS = {code: None for code in range(32) if chr(code) not in "\t\n\r"} | {0x7F: None}


def block_end_detector(healed: str, prefix: str, suffix: str = "") -> Callable[[str], bool]:
    """Whether a multi-line generation has left its block, so decoding can stop early.

    A line that starts less indented than the first generated line ends the block (the same rule
    postprocess cuts at); so do two blank lines in a row, and a line that repeats the next line of
    code below the cursor. Postprocess does the exact trimming; this only saves decoding what would
    be trimmed (up to max_multi_line_tokens at ~16 tok/s on CPU).
    """
    below = [line.rstrip() for line in suffix.split("\n")[1:] if line.strip()][:1]
    typed_indent = len(prefix) - len(prefix.rstrip(" \t")) if prefix.rstrip(" \t").endswith("\n") or not prefix.strip() else 0

    def ended(generated: str) -> bool:
        lines = strip_healed(generated, healed).split("\n")
        if len(cut_where_code_below_resumes(lines[:-1], below)) < len(lines[:-1]):
            return True
        body_indent = None
        for number, line in enumerate(lines[:-1] if len(lines) > 1 else []):
            if number > 0 and line.strip():
                indent = len(line) - len(line.lstrip(" \t"))
                if body_indent is not None and indent < body_indent:
                    return True
            if line.strip() and body_indent is None:
                body_indent = (typed_indent if number == 0 else 0) + len(line) - len(line.lstrip(" \t"))
        # The line being written counts as soon as it shows its first character.
        last = lines[-1] if len(lines) > 1 else ""
        if body_indent is not None and last.strip():
            return len(last) - len(last.lstrip(" \t")) < body_indent
        return "\n\n\n" in generated

    return ended
