"""The completion service's plain parts: clipping huge documents, control characters, and which
candidates are shown."""

from __future__ import annotations

from fimble.completion.prompt import FimPrompt
from fimble.completion.service import (
    CUT_STEP_LINES,
    MAX_PREFIX_LINES,
    MAX_SIDE_CHARS,
    MAX_SUFFIX_LINES,
    CompletionRequest,
    CompletionSettings,
    clip_around_cursor,
    shown_completion,
    without_control_characters,
)
from fimble.completion.trigger import CompletionMode
from fimble.models.generation import GenerationResult


def test_normal_files_are_not_clipped():
    request = CompletionRequest("x = 1\ny = \nz = 3\n", 10)
    assert clip_around_cursor(request) is request


def test_a_huge_file_is_clipped_to_a_window_that_stays_put_while_typing():
    lines = [f"value_{i} = {i}\n" for i in range(100_000)]
    text = "".join(lines)
    offset = len("".join(lines[:60_000])) + len("value_60000")
    clipped = clip_around_cursor(CompletionRequest(text, offset))
    assert clipped.suffix == "".join(lines[60_000 : 60_000 + MAX_SUFFIX_LINES])[len("value_60000") :]
    kept = clipped.prefix.count("\n")
    assert MAX_PREFIX_LINES <= kept < MAX_PREFIX_LINES + CUT_STEP_LINES
    assert clipped.prefix.startswith("value_")
    # Typing on the same line (and a few lines further) keeps the same cut.
    later = text[:offset] + " + 1" + text[offset:]
    assert clip_around_cursor(CompletionRequest(later, offset + 4)).prefix.startswith(clipped.prefix.split("\n", 1)[0] + "\n")


def test_one_giant_line_keeps_its_tail():
    text = "x" * (3 * MAX_SIDE_CHARS)
    clipped = clip_around_cursor(CompletionRequest(text, len(text)))
    assert len(clipped.prefix) == MAX_SIDE_CHARS and clipped.suffix == ""


def test_control_characters_are_removed():
    assert without_control_characters("a\x00b\tc\r\n\x1bd\x7f") == "ab\tc\r\nd"


def shown(result: GenerationResult, explicit: bool = False):
    prompt = FimPrompt("", [], "", "")
    request = CompletionRequest("x = \n", 4, "python", explicit)
    return shown_completion(result, prompt, CompletionMode.SINGLE_LINE, request, CompletionSettings(), (), ())


def test_candidates_are_shown_in_order_distinct_and_each_as_a_suggestion_alone_would_be():
    sure, unsure = (-0.1,), (-3.0,)
    result = GenerationResult(
        "1", "stop_string", logprobs=sure,
        alternatives=(
            GenerationResult("1", "stop_string", logprobs=sure),  # the same text again
            GenerationResult("2", "stop_string", logprobs=unsure),  # unsure: withheld, as alone
            GenerationResult("3", "stop_string", logprobs=sure),
        ),
    )
    completion = shown(result)
    assert (completion.text, completion.alternatives) == ("1", ("3",))
    assert shown(result, explicit=True).alternatives == ("2", "3")  # asked for: even when unsure


def test_an_empty_first_answer_leaves_the_lead_to_the_next_candidate():
    result = GenerationResult("", "stop_string", logprobs=(-0.1,), alternatives=(GenerationResult("2", "stop_string", logprobs=(-0.1,)),))
    completion = shown(result)
    assert (completion.text, completion.alternatives, completion.empty_because) == ("2", (), "")
    nothing = shown(GenerationResult("", "stop_string", logprobs=(-0.1,)))
    assert (nothing.text, nothing.empty_because) == ("", "postprocess")
