"""The generation in flight and the latency budget (lsp_server/suggestions.py), with a scripted
model: its text arrives when the test says so, which makes the races exact. (The real server and
daemon are driven in test_typing_cache.py; there the tiny model is too fast to be caught before
it has written past a cursor.)"""

from __future__ import annotations

import asyncio
import time

from fimble.completion.service import Completion, CompletionRequest
from fimble.completion.trigger import CompletionMode
from fimble.lsp_server.suggestions import Suggestions

LINE = CompletionMode.SINGLE_LINE


class ScriptedModel:
    """A RunCompletion whose generations stream and finish when the test says so."""

    def __init__(self) -> None:
        self.started: list[CompletionRequest] = []
        self.background: list[bool] = []
        self.on_draft: list = []
        self.finish: list[asyncio.Future] = []

    async def __call__(self, uri: str, request: CompletionRequest, on_draft, background: bool) -> Completion:
        self.started.append(request)
        self.background.append(background)
        self.on_draft.append(on_draft)
        self.finish.append(asyncio.get_running_loop().create_future())
        on_draft("", LINE)  # the model is loaded and its mode known: the latency budget runs from here
        return await self.finish[-1]


async def no_debounce() -> None:
    pass


async def ask(suggestions: Suggestions, prefix: str) -> Completion:
    return await suggestions.answer("file:///work/a.py", CompletionRequest(prefix, len(prefix)), time.monotonic(), no_debounce)


async def test_typing_past_the_budget_before_the_model_reaches_the_cursor_starts_no_second_generation():
    model = ScriptedModel()
    suggestions = Suggestions(model)
    suggestions.max_latency_ms = 10

    late = await ask(suggestions, "total = ")
    assert (late.text, late.empty_because) == ("", "late")  # past the budget with nothing written yet
    # Typed on while the model still writes nothing (a slow, cold prefill): the generation in
    # flight still serves this cursor, so it goes on alone.
    late = await ask(suggestions, "total = s")
    assert (late.text, late.empty_because) == ("", "late")
    assert len(model.started) == 1, "a second generation was started beside the one still writing this line"

    model.on_draft[0]("sum(values)", LINE)
    model.finish[0].set_result(Completion("sum(values)", LINE))
    await asyncio.sleep(0)
    rest = await ask(suggestions, "total = su")
    assert (rest.text, rest.from_cache) == ("m(values)", True) and len(model.started) == 1


async def test_a_keystroke_the_model_disagrees_with_stops_its_generation_and_starts_one_for_the_new_cursor():
    model = ScriptedModel()
    suggestions = Suggestions(model)
    suggestions.max_latency_ms = 10

    await ask(suggestions, "total = ")
    model.on_draft[0]("sum(values)", LINE)  # written, not finished
    suggestions.max_latency_ms = None  # the new cursor's answer is waited for, however long it takes
    answer = asyncio.ensure_future(ask(suggestions, "total = len"))
    await asyncio.sleep(0.05)
    assert len(model.started) == 2 and model.finish[0].cancelled(), "the first generation should stop: 'l' disagrees with 'sum'"
    model.finish[1].set_result(Completion("(values)", LINE))
    assert (await answer).text == "(values)"


async def test_a_keystroke_the_prefetch_has_not_reached_gets_a_generation_at_the_users_priority():
    model = ScriptedModel()
    suggestions = Suggestions(model)
    suggestions.max_latency_ms = 10
    suggestions.prefetch("file:///work/a.py", CompletionRequest("total = ", len("total = ")), time.monotonic())
    await asyncio.sleep(0.05)  # the prefetch's budget is spent; it has written nothing yet

    answer = asyncio.ensure_future(ask(suggestions, "total = s"))
    await asyncio.sleep(0.05)
    assert len(model.started) == 2 and not model.finish[0].done(), "the prefetch runs on, and the keystroke gets its own generation"
    assert model.background == [True, False]
    model.finish[1].set_result(Completion("um(values)", LINE))
    await answer
