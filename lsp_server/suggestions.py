"""Completions that later keystrokes share, per document: the suggestion cache, the generation in
flight, and the prefetch after an accepted suggestion.

    recall from the cache ─hit─> the rest of an earlier suggestion, at once
      │ miss
    the generation in flight serves this cursor? ─yes─> wait for it, then take the rest
      │ no
    cancel it, debounce, start a new one

A generation serves a newer cursor when the user only typed on from its cursor and what they typed
agrees with what the model has written so far; any other keystroke cancels it. The editor's cancel
of the older request comes just before the newer request, so a generation whose last waiter left
is kept for a moment (`TAKEOVER_GRACE_S`) for the newer request to take over. A prefetch is a
generation nobody waits for yet (it runs in the background, after what users wait for).

The latency budget: a single-line answer not finished `max_latency_ms` after its keystroke is shown
as the draft so far, cut after its last whole word (or nothing, before the model has begun), and
the generation goes on, so that typing on, or asking again, finds the whole line in the cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from fimble.completion.service import Completion, CompletionRequest, DraftCallback, draft_completion
from fimble.completion.suggestion_cache import SuggestionCache, rest_after
from fimble.completion.trigger import CompletionMode


# How long a generation whose request was cancelled waits for the next keystroke's request to take it
# over. VS Code sends that request after its own debounce (tens of ms); the typing session's typist,
# at 8 characters a second, 125 ms after the keystroke before.
TAKEOVER_GRACE_S = 0.5


class RunCompletion(Protocol):
    def __call__(
        self, uri: str, request: CompletionRequest, on_draft: DraftCallback, background: bool
    ) -> Awaitable[Completion]: ...


@dataclass
class Generation:
    request: CompletionRequest
    started_at: float  # time.monotonic() of the keystroke it answers
    keep_running: bool  # a prefetch, or an answer shown as a draft: it runs on with nobody waiting
    background: bool = False  # a prefetch: scheduled after every completion someone waits for
    task: asyncio.Task | None = None
    streamed: str = ""  # the model's text for the cursor so far
    mode: CompletionMode = CompletionMode.NONE  # known once the request's mode is decided
    waiters: int = 0
    # An answer from it went to a request already: the editor showed it (a draft at the latency
    # budget, or the whole answer), so a later request typed into it gets its rest as `from_cache`.
    shown: bool = False
    # Set once the mode is known and the model is loaded; the latency budget leaves out the time
    # before, so that a model still loading never turns a suggestion into nothing.
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def serves(self, request: CompletionRequest) -> bool:
        if self.task is None or self.task.done():
            return False  # a finished answer is in the cache, which knows how much of it is left
        if request.explicit and not self.request.explicit:
            return False  # asked for, the answer may be wider (multi-line) and is never withheld
        if request.suffix != self.request.suffix or not request.prefix.startswith(self.request.prefix):
            return False
        typed = typed_since(self.request, request)
        known = min(len(typed), len(self.streamed))
        return typed[:known] == self.streamed[:known]

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


def typed_since(earlier: CompletionRequest, later: CompletionRequest) -> str:
    return later.prefix[len(earlier.prefix) :]


class Suggestions:
    def __init__(self, run: RunCompletion, cache: SuggestionCache | None = None):
        self._run = run
        self.cache = cache or SuggestionCache()
        self.max_latency_ms: int | None = None
        # Off, every keystroke asks the model and cancels the answer before (the cache unused).
        self.reuse = True
        self._generations: dict[str, Generation] = {}

    async def answer(self, uri: str, request: CompletionRequest, started_at: float, debounce: Callable[[], Awaitable[None]]) -> Completion:
        """The completion for a keystroke on `uri`."""
        if not self.reuse:
            self.forget(uri)
            await debounce()
            return await self._wait_for_own(self._start(uri, request, started_at, keep_running=False))
        hit = self.cache.recall(request)
        if hit is not None:
            self._cancel_unless_serving(uri, request)
            return hit
        generation = self._generations.get(uri)
        if generation is not None and generation.serves(request):
            answer = await self._wait(generation, request)
            if answer is not None:
                return answer
            if generation.serves(request) and not generation.background:
                # Past the latency budget, the model has not yet written past this cursor, and
                # what it wrote agrees with what was typed: it goes on (its line is for the cache).
                # A second generation would only compute the same line again beside it; under
                # load (a cold KV cache after a daemon restart) every keystroke started one, and
                # each slowed the others (benchmarks/fault_recovery.py). A prefetch is left to
                # run, but a user now waits for this line: it gets a generation at their priority.
                return Completion("", generation.mode, empty_because="late")
            self._cancel_unless_serving(uri, request)
        else:
            self._cancel_unless_serving(uri, request)
            await debounce()
        return await self._wait_for_own(self._start(uri, request, started_at, keep_running=False))

    def prefetch(self, uri: str, request: CompletionRequest, started_at: float) -> None:
        """Start the completion for a cursor the user is expected to reach, in the background."""
        if self.cache.recall(request) is not None:
            return
        generation = self._generations.get(uri)
        if generation is not None and generation.serves(request):
            return
        self._cancel_unless_serving(uri, request)
        self._start(uri, request, started_at, keep_running=True)

    def forget(self, uri: str) -> None:
        if (generation := self._generations.pop(uri, None)) is not None:
            generation.cancel()

    def clear(self) -> None:
        """Settings changed, or the model: no earlier answer stands."""
        for uri in list(self._generations):
            self.forget(uri)
        self.cache.clear()

    def _cancel_unless_serving(self, uri: str, request: CompletionRequest) -> None:
        generation = self._generations.get(uri)
        if generation is not None and not generation.serves(request):
            generation.cancel()
            del self._generations[uri]

    def _start(self, uri: str, request: CompletionRequest, started_at: float, keep_running: bool) -> Generation:
        generation = Generation(request, started_at, keep_running, background=keep_running)
        created_at = time.monotonic()

        def on_draft(text: str, mode: CompletionMode) -> None:
            if not generation.ready.is_set():  # the time spent waiting for the model does not count
                generation.started_at += time.monotonic() - created_at
                generation.ready.set()
            generation.streamed, generation.mode = text, mode

        async def run() -> Completion:
            completion = await self._run(uri, request, on_draft, background=generation.background)
            if self.reuse:
                self.cache.remember(request, completion)
            return completion

        generation.task = asyncio.ensure_future(run())
        # A prefetch nobody came for may fail unseen (the daemon restarting, say); its error is
        # read here so asyncio does not log it as lost. A waiter sees it through shield().
        generation.task.add_done_callback(lambda task: task.cancelled() or task.exception())
        self._generations[uri] = generation
        return generation

    async def _wait(self, generation: Generation, request: CompletionRequest) -> Completion | None:
        """The generation's answer, less what was typed since it started; None when the model wrote
        something other than what the user typed. A waiter that goes (a cancelled request) stops the
        generation when nobody else waits, none takes it over, and it need not run on."""
        generation.waiters += 1
        try:
            completion = await self._answer_within_budget(generation)
        finally:
            generation.waiters -= 1
            if generation.waiters == 0 and not generation.keep_running:
                self._cancel_unless_taken_over(generation)
        rest = rest_after(completion, typed_since(generation.request, request))
        if rest is None:
            return None
        # Taken over from a cancelled request, the answer is shown for the first time.
        rest = dataclasses.replace(rest, from_cache=generation.shown)
        generation.shown = True
        return rest

    def _cancel_unless_taken_over(self, generation: Generation) -> None:
        """Stop a generation its last waiter left. Editors cancel the request of the keystroke before
        ($/cancelRequest) just before they send the next keystroke's request, so with the cache on,
        the generation is kept for a moment for that request to take over; a request it does not
        serve cancels it at once (`_cancel_unless_serving`)."""
        if not self.reuse:
            generation.cancel()
            return

        def cancel_if_still_orphaned() -> None:
            if generation.waiters == 0 and not generation.keep_running:
                generation.cancel()

        asyncio.get_running_loop().call_later(TAKEOVER_GRACE_S, cancel_if_still_orphaned)

    async def _wait_for_own(self, generation: Generation) -> Completion:
        """The answer of a generation started for this very request (nothing typed since)."""
        return await self._wait(generation, generation.request) or Completion("", CompletionMode.NONE)

    async def _answer_within_budget(self, generation: Generation) -> Completion:
        if self.max_latency_ms is not None:
            ready = asyncio.ensure_future(generation.ready.wait())
            try:
                await asyncio.wait([generation.task, ready], return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
        remaining = self._budget_left(generation)
        if remaining is None:
            return await asyncio.shield(generation.task)
        try:
            return await asyncio.wait_for(asyncio.shield(generation.task), remaining)
        except TimeoutError:
            generation.keep_running = self.reuse  # its whole line is for the cache, if there is one
            return draft_completion(generation.request, generation.streamed, generation.mode)

    def _budget_left(self, generation: Generation) -> float | None:
        if self.max_latency_ms is None or generation.mode != CompletionMode.SINGLE_LINE or generation.task.done():
            return None
        return max(generation.started_at + self.max_latency_ms / 1000 - time.monotonic(), 0.0)
