"""The completion path, keystroke to ghost text, as plain logic over a model backend:

    decide_mode -> build_fim_prompt_around -> backend.generate -> strip_healed -> postprocess -> abstain

The backend (models/backend.py) is the daemon's socket, a remote server or an in-process engine
(`fimble complete`); the same code runs here for each. The model's family (models/families.py)
gives the FIM format, the stop tokens and the repository-context format.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Callable

from fimble.completion.postprocess import postprocess
from fimble.completion.prompt import FimBudget, FimPrompt, build_fim_prompt_around
from fimble.completion.trigger import CompletionMode, decide_mode
from fimble.models.backend import Backend, ServedModel, Tokenizer
from fimble.models.families import RepoFormat
from fimble.models.generation import GenerationChunk, GenerationRequest, GenerationResult, GenerationStats, StopRules
from fimble.models.spec import Role
from fimble.models.stopping import block_end_for, strip_healed

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
    candidates: int = 1  # suggestions per request (GenerationRequest.candidates)


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
class Completion:
    text: str  # inserted at the cursor; "" when there is nothing to show
    mode: CompletionMode
    mean_logprob: float | None = None
    # Why the text is empty: "trigger", "abstained", "postprocess", "model", "late", "secret" (the
    # document holds secrets, so nothing of it went to a model: lsp_server/server.py); "" when there is text.
    empty_because: str = ""
    stats: GenerationStats = GenerationStats()
    context_files: tuple[str, ...] = ()  # the other files whose code was in the prompt
    error: str = ""  # empty_because "model": what failed
    warnings: tuple[str, ...] = ()  # about the model serving this mode (an instruct model asked for FIM)
    from_cache: bool = False  # the rest of an earlier suggestion (completion/suggestion_cache.py)
    # The other candidates for the cursor, after `text`: each shown, distinct and non-empty.
    alternatives: tuple[str, ...] = ()


# Given the tokenizer (to count the budget), the budget and the model family's repository format,
# the repository context for the cursor.
ContextSource = Callable[[Tokenizer, int, RepoFormat], str]


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


# Sees the model's text for the cursor so far, and the mode it was asked in (first with "", once the
# mode is known and the model is loaded).
DraftCallback = Callable[[str, CompletionMode], None]


async def complete(
    request: CompletionRequest,
    settings: CompletionSettings,
    backend: Backend,
    context_source: ContextSource | None = None,
    on_draft: DraftCallback | None = None,
    background: bool = False,
) -> Completion:
    """The completion for a cursor. `on_draft` sees the text as the model writes it, before
    postprocessing; `background` marks a prefetch, which nobody waits for yet."""
    request = clip_around_cursor(request)
    mode = decide_mode(request.prefix, request.suffix, request.language_id, request.explicit)
    if mode == CompletionMode.MULTI_LINE and not settings.multi_line:
        mode = CompletionMode.SINGLE_LINE
    if mode == CompletionMode.NONE:
        return Completion("", mode, empty_because="trigger")
    served = await backend.model(ROLE_FOR_MODE[mode])  # waits while the model loads
    if on_draft is not None:
        on_draft("", mode)
    fim, repo = served.family.fim, served.family.repo
    if fim is None:
        return Completion("", mode, empty_because="model", error=f"{served.info.name} does not fill in the middle", warnings=served.info.warnings)
    context = ""
    if context_source is not None and settings.context_tokens > 0 and repo is not None:
        # Retrieval parses and tokenizes: keep it off the event loop that serves keystrokes.
        context = await asyncio.to_thread(context_source, served.tokenizer, settings.context_tokens, repo)
    ids = not served.info.takes_text
    prompt = build_fim_prompt_around(request.prefix, request.suffix, served.tokenizer, settings.budget, context, fim=fim, token_ids=ids)
    result = await generate_drafting(backend, generation_request(prompt, mode, request, settings, served, background), prompt.healed, mode, on_draft)
    if prompt.healed and result.finish_reason != "error" and not result.text.startswith("\n"):
        # Asked to start the cursor's line, the model went on with the line above ("0", "= []").
        # That text doesn't belong at the cursor: ask again with the plain prompt, which shares
        # all but its last token with this one in the prefix cache. On HumanEval single-line,
        # 25 of 1,033 tasks took this path, and their healed answers all failed.
        prompt = build_fim_prompt_around(request.prefix, request.suffix, served.tokenizer, settings.budget, context, False, fim, ids)
        result = await generate_drafting(backend, generation_request(prompt, mode, request, settings, served, background), "", mode, on_draft)
    return shown_completion(result, prompt, mode, request, settings, context_files(context, repo), served.info.warnings)


async def generate_drafting(
    backend: Backend, request: GenerationRequest, healed: str, mode: CompletionMode, on_draft: DraftCallback | None
) -> GenerationResult:
    """backend.generate, with the text for the cursor so far streamed to `on_draft`."""
    if on_draft is None:
        return await backend.generate(request)
    pieces: list[str] = []

    def on_chunk(chunk: GenerationChunk) -> None:
        pieces.append(chunk.text)
        on_draft(strip_healed("".join(pieces), healed) if healed else "".join(pieces), mode)

    return await backend.generate(request, on_chunk)


def draft_completion(request: CompletionRequest, draft: str, mode: CompletionMode) -> Completion:
    """What to show of a completion still being written (past the latency budget): the draft cut
    after its last whole word, postprocessed like a finished one; it may be empty."""
    text = postprocess(without_control_characters(until_last_whole_word(draft)), request.prefix, request.suffix, mode, request.language_id)
    return Completion(text, mode, empty_because="" if text else "late")


def until_last_whole_word(text: str) -> str:
    """Partial output cut where a token boundary is safe: an identifier or number still being
    written ("fibona") may be unfinished, so it goes, and so does the space before it."""
    return _UNFINISHED_WORD.sub("", text).rstrip(" \t")


_UNFINISHED_WORD = re.compile(r"\w+$")


def shown_completion(
    result: GenerationResult,
    prompt: FimPrompt,
    mode: CompletionMode,
    request: CompletionRequest,
    settings: CompletionSettings,
    files: tuple[str, ...],
    warnings: tuple[str, ...],
) -> Completion:
    """What of the model's answer is shown: healed, postprocessed, or nothing when it is unsure.
    With candidates, the first answer that is shown leads and the others follow it."""
    if result.finish_reason == "error":
        return Completion("", mode, result.mean_logprob, "model", result.stats, files, result.error or "the model failed", warnings)
    texts: list[str] = []
    for answer in (result, *result.alternatives):
        text, _ = shown_text(answer, prompt, mode, request, settings)
        if text and text not in texts:
            texts.append(text)
    if not texts:
        _, empty_because = shown_text(result, prompt, mode, request, settings)
        return Completion("", mode, result.mean_logprob, empty_because, result.stats, files, warnings=warnings)
    return Completion(texts[0], mode, result.mean_logprob, "", result.stats, files, warnings=warnings, alternatives=tuple(texts[1:]))


def shown_text(
    result: GenerationResult, prompt: FimPrompt, mode: CompletionMode, request: CompletionRequest, settings: CompletionSettings
) -> tuple[str, str]:
    """One answer's text as shown, and why it is empty ("abstained", "postprocess") when it is."""
    if result.finish_reason == "error":
        return "", "model"
    raw = without_control_characters(strip_healed(result.text, prompt.healed))
    text = postprocess(raw, request.prefix, request.suffix, mode, request.language_id)
    # A completion the user asked for is shown even when the model is unsure.
    threshold = None if request.explicit else settings.abstain_below_logprob
    if text and threshold is not None and result.mean_logprob is not None and result.mean_logprob < threshold:
        return "", "abstained"
    return text, "" if text else "postprocess"


def generation_request(
    prompt: FimPrompt,
    mode: CompletionMode,
    request: CompletionRequest,
    settings: CompletionSettings,
    served: ServedModel,
    background: bool = False,
) -> GenerationRequest:
    single = mode == CompletionMode.SINGLE_LINE
    stop = StopRules(
        token_ids=served.stop_token_ids,
        # Single-line: stop at the first line break after some text.
        strings=("\n",) if single else (),
        after_text=bool(prompt.healed),
        block_end=None if single else block_end_for(prompt.healed, request.prefix, request.suffix),
    )
    max_new_tokens = settings.max_single_line_tokens if single else settings.max_multi_line_tokens
    return GenerationRequest(
        ROLE_FOR_MODE[mode], max_new_tokens, tuple(prompt.token_ids), prompt.text, stop=stop, background=background, candidates=settings.candidates
    )


def context_files(context: str, repo: RepoFormat | None) -> tuple[str, ...]:
    """The files a repository context quotes (every file header but the last, the current file)."""
    if not context or repo is None:
        return ()
    paths = [block.split("\n", 1)[0] for block in context.split(repo.file_marker)[1:]]
    return tuple(paths[:-1])


def without_control_characters(text: str) -> str:
    """Editors cut ghost text at a NUL and render other C0 controls as garbage; code never needs them."""
    return text.translate(_CONTROL_CHARACTERS)


_CONTROL_CHARACTERS = {code: None for code in range(32) if chr(code) not in "\t\n\r"} | {0x7F: None}
