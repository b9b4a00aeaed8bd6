"""The FIM prompt: cursor splitting, budgets, and a prefix window that stays put while typing."""

from __future__ import annotations

import argparse
import bisect
import inspect
import textwrap
from random import Random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from fimble.completion.prompt import (
    Cursor,
    FimBudget,
    build_fim_prompt_around,
    encode_fim_prompt,
    prefix_window_start,
    recent_token_starts,
    splits_at_line_starts,
    split_at_cursor,
    suffix_window,
    token_starts,
)
from fimble.models.families import QWEN25_CODER, STARCODER2


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


def prompt_at(text: str, cursor: Cursor, tokenizer, budget: FimBudget = FimBudget()):
    prefix, suffix = split_at_cursor(text, cursor)
    return build_fim_prompt_around(prefix, suffix, tokenizer, budget)


def test_split_at_cursor_counts_characters_not_bytes():
    text = "naïve = 'café'\nprint(naïve)\n"
    assert split_at_cursor(text, Cursor(0, 7)) == ("naïve =", " 'café'\nprint(naïve)\n")
    assert split_at_cursor(text, Cursor(1, 6)) == ("naïve = 'café'\nprint(", "naïve)\n")
    assert split_at_cursor(text, Cursor(2, 0)) == (text, "")


@pytest.mark.parametrize("cursor, message", [(Cursor(5, 0), "past the end of the file"), (Cursor(0, 40), "past the end of line 1"), (Cursor(-1, 0), "negative")])
def test_a_cursor_outside_the_file_is_a_clear_error(cursor, message):
    with pytest.raises(ValueError, match=message):
        split_at_cursor("x = 1\ny = 2\n", cursor)


def test_prompt_layout_is_psm_with_special_tokens(tokenizer):
    text = "def add(a, b):\n    return \n\nprint(add(1, 2))\n"
    prompt = prompt_at(text, Cursor(1, 11), tokenizer)
    assert prompt.text == "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    fim_ids = tokenizer.convert_tokens_to_ids(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"])
    assert prompt.token_ids[0] == fim_ids[0] and prompt.token_ids[-1] == fim_ids[2]
    assert fim_ids[1] in prompt.token_ids


def test_budgets_trim_at_line_boundaries(tokenizer):
    lines = [f"value_{i} = compute({i})\n" for i in range(300)]
    text = "".join(lines)
    budget = FimBudget(prefix_tokens=200, suffix_tokens=40, window_step_lines=8)
    prompt = prompt_at(text, Cursor(150, 0), tokenizer, budget)
    assert len(tokenizer.encode(prompt.prefix)) <= 200
    assert len(tokenizer.encode(prompt.suffix)) <= 40
    # The cursor is at a line start: the prefix stops before the line break (line-start healing).
    assert prompt.prefix.startswith("value_") and prompt.prefix.endswith("compute(149)") and prompt.healed == "\n"
    assert prompt.suffix.startswith("value_150") and prompt.suffix.endswith("\n")


def test_line_start_healing_cuts_the_line_break_and_indentation(tokenizer):
    text = "def add(a, b):\n    \n"
    prompt = prompt_at(text, Cursor(1, 4), tokenizer)
    assert prompt.healed == "\n    "
    assert prompt.prefix == "def add(a, b):" and prompt.suffix == "\n"
    # Mid-line, nothing is healed.
    assert prompt_at(text, Cursor(0, 7), tokenizer).healed == ""


def test_the_prefix_window_stays_put_while_typing(tokenizer):
    text = "".join(f"item_{i} = [{i}, {i + 1}]\n" for i in range(400))
    budget = FimBudget(prefix_tokens=1200, window_step_lines=16)
    # A step of 16 lines is ~320 tokens here: 60 keystrokes (~120 tokens) may cross one jump at most.
    starts = [prefix_window_start(text[: len(text) // 2 + k], tokenizer, budget) for k in range(60)]
    assert len(set(starts)) <= 2, "consecutive keystrokes kept moving the window and losing the prefix cache"
    assert starts == sorted(starts)
    assert prefix_window_start(text, tokenizer, budget) > starts[-1], "the window never moves forward"


def test_one_huge_line_keeps_the_tail_within_budget(tokenizer):
    prefix = "x = [" + ", ".join(str(i) for i in range(3000))
    start = prefix_window_start(prefix, tokenizer, FimBudget(prefix_tokens=100))
    assert 0 < start < len(prefix)
    assert len(tokenizer.encode(prefix[start:])) <= 101


def test_suffix_that_fits_is_kept_whole(tokenizer):
    assert suffix_window("\nreturn x\n", tokenizer, FimBudget()) == "\nreturn x\n"


def whole_text_window_start(prefix: str, tokenizer, budget: FimBudget) -> int:
    """prefix_window_start as it reads if it tokenized the whole prefix."""
    starts = token_starts(prefix, tokenizer)
    if len(starts) <= budget.prefix_tokens:
        return 0
    line_starts = [0] + [i + 1 for i, ch in enumerate(prefix) if ch == "\n"]
    for candidates in (line_starts[:: budget.window_step_lines], line_starts):
        for start in candidates:
            if len(starts) - bisect.bisect_left(starts, start) <= budget.prefix_tokens:
                return start
    return starts[-budget.prefix_tokens]


def whole_text_suffix_window(suffix: str, tokenizer, budget: FimBudget) -> str:
    starts = token_starts(suffix, tokenizer)
    if len(starts) <= budget.suffix_tokens:
        return suffix
    cut = suffix.rfind("\n", 0, starts[budget.suffix_tokens])
    return suffix[: cut + 1] if cut >= 0 else ""


def check_windows_match_whole_text_tokenization(tokenizer, cursors: int) -> None:
    budget = FimBudget()
    random = Random(7)
    context = "<|repo_name|>demo\n<|file_sep|>demo/util.py\ndef helper():\n    return 1\n<|file_sep|>demo/main.py\n"
    for module in (textwrap, argparse):  # real files of the standard library, 500 and 2,600 lines
        text = inspect.getsource(module)
        for offset in sorted(random.sample(range(len(text)), cursors)):
            prefix, suffix = text[:offset], text[offset:]
            assert prefix_window_start(prefix, tokenizer, budget) == whole_text_window_start(prefix, tokenizer, budget), (module, offset)
            assert suffix_window(suffix, tokenizer, budget) == whole_text_suffix_window(suffix, tokenizer, budget), (module, offset)
            prompt = build_fim_prompt_around(prefix, suffix, tokenizer, budget, context if offset % 2 else "")
            assert prompt.token_ids == tokenizer.encode(prompt.text, add_special_tokens=False), (module, offset)


def test_budget_windows_equal_those_of_whole_text_tokenization(tokenizer):
    check_windows_match_whole_text_tokenization(tokenizer, 60)


def test_typing_a_line_reuses_the_tokens_around_it_and_keeps_the_windows_exact(tokenizer):
    text = inspect.getsource(argparse)
    line_start = text.index("\n", len(text) // 2) + 1
    line_end = text.index("\n", line_start)
    budget = FimBudget()
    recent_token_starts.cache_clear()
    for cursor in range(line_start + 1, line_end):  # each keystroke of the line, its rest not yet typed
        prefix, suffix = text[:cursor], text[line_end:]
        assert prefix_window_start(prefix, tokenizer, budget) == whole_text_window_start(prefix, tokenizer, budget), cursor
        assert suffix_window(suffix, tokenizer, budget) == whole_text_suffix_window(suffix, tokenizer, budget), cursor
    keystrokes = line_end - line_start - 1
    # The prefix's lines above the cursor and the suffix are tokenized on the first keystroke only.
    assert recent_token_starts.cache_info().misses == 2 and recent_token_starts.cache_info().hits == 2 * (keystrokes - 1)


@pytest.mark.slow
def test_budget_windows_equal_those_of_whole_text_tokenization_with_qwens_tokenizer(embedded_model_cache):
    from fimble.models.embedded import ensure_embedded_checkpoint

    check_windows_match_whole_text_tokenization(AutoTokenizer.from_pretrained(ensure_embedded_checkpoint(embedded_model_cache)), 150)


def test_a_tokenizer_that_marks_the_start_of_every_text_gets_the_prompt_encoded_whole():
    # SentencePiece-style: a "▁" before every text it is given, so a prompt encoded in pieces
    # would carry one at each cut. The probe finds that, and the prompt is encoded whole.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tokenizer.train_from_iterator([inspect.getsource(textwrap)], trainers.BpeTrainer(vocab_size=300, special_tokens=["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    fim = STARCODER2.fim
    assert not splits_at_line_starts(fast, fim)
    prefix, suffix = "def f(a):\n    return", " a\n"
    assert encode_fim_prompt("", prefix, suffix, fim, fast) == fast.encode(fim.render(prefix, suffix), add_special_tokens=False)


def test_qwens_byte_level_tokenizer_may_be_encoded_in_pieces(tokenizer):
    assert splits_at_line_starts(tokenizer, QWEN25_CODER.fim)


def test_repository_context_never_shrinks_the_in_file_window(tokenizer):
    """The context has its own budget: the file's prefix and suffix windows are the same with it."""
    text = inspect.getsource(argparse)
    cursor = len(text) // 2
    context = "<|repo_name|>demo\n<|file_sep|>demo/util.py\n" + "def helper():\n    return 1\n" * 200 + "<|file_sep|>demo/main.py\n"
    plain = build_fim_prompt_around(text[:cursor], text[cursor:], tokenizer)
    with_context = build_fim_prompt_around(text[:cursor], text[cursor:], tokenizer, context=context)
    assert (with_context.prefix, with_context.suffix) == (plain.prefix, plain.suffix)
    assert with_context.token_ids[-len(plain.token_ids) :] == plain.token_ids
