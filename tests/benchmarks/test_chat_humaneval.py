"""HumanEval through chat: what is taken from an answer, the program that is run, and the reference
(EvalPlus) prompt the comparison run asks."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from benchmarks.chat_humaneval import REFERENCE_RESPONSE_PREFIX, code_from_answer, program_for, reference_prompt
from benchmarks.humaneval_tasks import load_problems
from benchmarks.sandbox import SandboxLimits, run_python


@pytest.fixture(scope="module")
def problem():
    return load_problems()[0]  # has_close_elements


def test_the_block_that_defines_the_function_wins_over_an_example_block():
    answer = "Use it like this:\n```python\nprint(f(1))\n```\nHere it is:\n```python\ndef f(x):\n    return x\n```\n"
    assert code_from_answer(answer, "f") == "def f(x):\n    return x\n"


def test_an_unclosed_fence_counts_up_to_the_end():
    assert code_from_answer("```python\ndef f(x):\n    return x", "f") == "def f(x):\n    return x"


def test_an_answer_cut_by_the_length_cap_keeps_its_complete_statements():
    answer = "```python\ndef f(x):\n    return x\n\nfor case in [1, 2]:\n    print(f(ca"
    assert code_from_answer(answer, "f", cut=True) == "def f(x):\n    return x\n"


def test_an_answer_without_fences_is_taken_whole():
    assert code_from_answer("def f(x):\n    return x\n", "f") == "def f(x):\n    return x\n"


def test_the_canonical_solution_as_an_answer_passes_and_a_wrong_one_fails(problem):
    right = f"Sure:\n```python\n{problem.prompt}{problem.canonical_solution}```\nIt compares each pair."
    wrong = f"```python\ndef {problem.entry_point}(numbers, threshold):\n    return False\n```"
    limits = SandboxLimits()
    assert run_python(program_for(problem, code_from_answer(right, problem.entry_point)), limits).passed
    assert not run_python(program_for(problem, code_from_answer(wrong, problem.entry_point)), limits).passed


def test_the_reference_prompt_is_evalplus_in_the_models_template(tiny_checkpoint, problem):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    text = reference_prompt(tokenizer, problem)
    # No system message given, so the template's default one is used, as in Qwen's own evaluation.
    assert text.startswith("<|im_start|>system\nYou are Qwen")
    assert f"```\n{problem.prompt.strip()}\n```" in text
    assert text.endswith("<|im_start|>assistant\n" + REFERENCE_RESPONSE_PREFIX)
