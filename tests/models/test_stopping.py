"""Stop rules on generated text (models/stopping.py): stop strings, what may be streamed, line-start
healing, and the end of a multi-line block, which the engine and the remote backend both apply."""

from __future__ import annotations

from fimble.models.generation import StopRules
from fimble.models.stopping import block_end_for, block_has_ended, first_stop, streamable_length, strip_healed


def test_strip_healed_keeps_what_goes_at_the_cursor():
    assert strip_healed("\n    return a + b", "\n    ") == "return a + b"
    assert strip_healed("\n        return a", "\n    ") == "    return a"  # deeper indentation
    assert strip_healed("\nreturn a", "\n    ") == ""  # shallower: not an insertion at the cursor
    assert strip_healed("    return a", "\n") == ""  # the model went on with the line above
    assert strip_healed("\n\n    return a", "\n") == "    return a"  # blank lines first are dropped
    assert strip_healed("\n  \n\n    return a", "\n    ") == "return a"
    assert strip_healed("x = 1", "") == "x = 1"


def test_the_block_ends_at_a_dedented_line():
    rule = block_end_for("\n    ", "def f(x):\n    ", "")
    assert not block_has_ended("\n    y = x + 1\n    return y", rule)
    assert not block_has_ended("\n    if y:\n        return y\n", rule)
    assert block_has_ended("\n    return y\n\ndef g", rule)
    assert block_has_ended("\n    y = 1\n\n\n\n", rule)


def test_the_block_ends_where_the_code_below_resumes():
    rule = block_end_for("\n", "def f(x):\n    y = 1\n", "\n    return y\n")
    assert rule.next_code_line == "    return y"
    assert not block_has_ended("\n    z = y * 2\n    w", rule)
    assert block_has_ended("\n    z = y * 2\n    return y\n", rule)


def test_the_block_end_cuts_the_text_where_it_is_seen():
    rules = StopRules(block_end=block_end_for("\n    ", "def f(x):\n    ", ""))
    text = "\n    return x\n\ndef g"
    assert first_stop(text, rules) == len(text)
    assert first_stop("\n    return x", rules) is None


def test_a_possible_stop_string_is_held_back_until_the_next_token_shows():
    rules = StopRules(strings=("<|im_end|>",))
    assert streamable_length("answer<|im", rules) == len("answer")
    assert streamable_length("answer <", rules) == len("answer ")
    assert streamable_length("answer", rules) == len("answer")
    assert first_stop("answer<|im_end|>more", rules) == len("answer")
