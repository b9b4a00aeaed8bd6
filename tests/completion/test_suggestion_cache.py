"""The suggestion cache on real edits: typing into a suggestion, deleting back, moving away and
returning, and edits elsewhere."""

from __future__ import annotations

from fimble.completion.service import Completion, CompletionRequest
from fimble.completion.suggestion_cache import SuggestionCache
from fimble.completion.trigger import CompletionMode

TEXT = "def area(radius):\n    return \n\nprint(area(2))\n"
CURSOR = TEXT.index("return ") + len("return ")


def answer(text: str, **changes) -> Completion:
    return Completion(text, CompletionMode.SINGLE_LINE, -0.2, **changes)


def typed(extra: str, text: str = TEXT, cursor: int = CURSOR, explicit: bool = False) -> CompletionRequest:
    return CompletionRequest(text[:cursor] + extra + text[cursor:], cursor + len(extra), "python", explicit)


def test_typing_into_a_suggestion_shows_its_rest_and_deleting_back_shows_more():
    cache = SuggestionCache()
    cache.remember(typed(""), answer("math.pi * radius ** 2"))
    for extra in ("m", "math.", "math.pi * r", "math."):
        hit = cache.recall(typed(extra))
        assert hit is not None and hit.text == "math.pi * radius ** 2"[len(extra) :] and hit.from_cache


def test_the_same_spot_gives_the_same_answer_even_an_empty_one():
    cache = SuggestionCache()
    cache.remember(typed(""), answer("", empty_because="abstained"))
    assert cache.recall(typed("")).empty_because == "abstained"
    # Asked for by the user, a completion is shown even where the model was unsure: ask it again.
    assert cache.recall(typed("", explicit=True)) is None
    cache.remember(typed("", explicit=True), answer("math.pi"))
    assert cache.recall(typed("m", explicit=True)).text == "ath.pi"


def test_typing_something_else_or_all_of_it_misses():
    cache = SuggestionCache()
    cache.remember(typed(""), answer("math.pi"))
    assert cache.recall(typed("3")) is None
    assert cache.recall(typed("math.pi")) is None  # nothing left to show: the model says what comes next


def test_an_edit_elsewhere_misses_before_and_after_the_cursor():
    cache = SuggestionCache()
    cache.remember(typed(""), answer("math.pi"))
    edited_above = "import math\n" + TEXT
    assert cache.recall(typed("", edited_above, CURSOR + len("import math\n"))) is None
    edited_below = TEXT.replace("area(2)", "area(3)")
    assert cache.recall(typed("m", edited_below)) is None


def test_failures_and_trigger_decisions_are_not_answers():
    cache = SuggestionCache()
    cache.remember(typed(""), answer("", empty_because="model", error="the daemon died"))
    cache.remember(typed("x"), answer("", empty_because="trigger"))
    assert len(cache) == 0 and cache.recall(typed("")) is None


def test_the_least_recently_used_answer_goes_first():
    cache = SuggestionCache(capacity=2)
    spots = [typed(str(n) * 3) for n in range(3)]
    cache.remember(spots[0], answer("a"))
    cache.remember(spots[1], answer("b"))
    assert cache.recall(spots[0]).text == "a"  # used: now the newest
    cache.remember(spots[2], answer("c"))
    assert [cache.recall(spot) is not None for spot in spots] == [True, False, True]


def test_the_newest_answer_wins_where_two_apply():
    cache = SuggestionCache()
    cache.remember(typed(""), answer("math.pi * r"))
    cache.remember(typed("ma"), answer("x(radius)"))
    assert cache.recall(typed("max(")).text == "radius)"
    assert cache.recall(typed("mat")).text == "h.pi * r"


def test_typing_into_the_first_candidate_keeps_the_others_it_agrees_with():
    cache = SuggestionCache()
    cache.remember(typed(""), answer("math.pi * radius ** 2", alternatives=("math.tau * radius", "radius * radius * 3.14")))
    hit = cache.recall(typed("math.p"))
    assert hit.text == "i * radius ** 2" and hit.alternatives == ()
    hit = cache.recall(typed("math."))
    assert hit.text == "pi * radius ** 2" and hit.alternatives == ("tau * radius",)
