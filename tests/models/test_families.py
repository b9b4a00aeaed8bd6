"""Model families (models/families.py) on real text: each family's FIM prompt around a cursor in a
real source file, its stop rules on text that runs past the middle, its repository format, and
how a model's family is found."""

from __future__ import annotations

import inspect
import textwrap

import pytest

from fimble.completion.prompt import build_fim_prompt_around
from fimble.context.retrieve import Snippet, format_repo_context
from fimble.models.backend import ApproximateTokenizer
from fimble.models.families import (
    CODELLAMA,
    CODESTRAL,
    DEEPSEEK_CODER,
    DEEPSEEK_CODER_V2,
    FAMILIES,
    QWEN25_CODER,
    STARCODER2,
    UnknownFamilyError,
    detect_family,
    fim_warning,
)
from fimble.models.generation import StopRules
from fimble.models.stopping import first_stop

SOURCE = inspect.getsource(textwrap)  # a real file: the standard library's textwrap.py
CURSOR = SOURCE.index("return self._wrap_chunks(chunks)")
PREFIX, SUFFIX = SOURCE[:CURSOR] + "return ", SOURCE[CURSOR + len("return ") :]

# Each family's prompt, as its model card shows it, around {prefix} and {suffix}.
EXPECTED_LAYOUT = {
    "qwen2.5-coder": "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
    "starcoder2": "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
    "deepseek-coder": "<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>",
    "deepseek-coder-v2": "<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>",
    "codellama": "<PRE> {prefix} <SUF>{suffix} <MID>",
    "codestral": "[SUFFIX]{suffix}[PREFIX]{prefix}",
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_fim_prompt_follows_the_family_format(name):
    family = FAMILIES[name]
    prompt = build_fim_prompt_around(PREFIX, SUFFIX, ApproximateTokenizer(), fim=family.fim, heal=False)
    before, _, rest = EXPECTED_LAYOUT[name].partition("{" + ("prefix" if family.fim.order == "psm" else "suffix") + "}")
    middle, _, after = rest.partition("{" + ("suffix" if family.fim.order == "psm" else "prefix") + "}")
    first, second = (prompt.prefix, prompt.suffix) if family.fim.order == "psm" else (prompt.suffix, prompt.prefix)
    assert prompt.text == before + first + middle + second + after
    assert prompt.prefix.endswith("return ") and prompt.suffix.startswith("self._wrap_chunks(chunks)")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_completion_stops_at_the_familys_end_tokens(name):
    family = FAMILIES[name]
    middle = "self._wrap_chunks(chunks)"
    for stop in family.stop_strings:
        generated = middle + stop + "\n\ndef fill(text):"
        assert first_stop(generated, StopRules(strings=family.stop_strings)) == len(middle), stop
    # Its special tokens become stop ids in a vocabulary that has them.
    vocabulary = {token: 1000 + number for number, token in enumerate(family.stop_tokens)}
    assert family.stop_token_ids(vocabulary) == tuple(sorted(vocabulary.values()))


def test_families_with_a_repository_format_lay_out_other_files_before_the_current_one():
    snippets = [Snippet("textwrap_helpers.py", "def dedent(text):\n    ...\n", 1.0)]
    count = lambda text: len(text.split())  # noqa: E731
    qwen = format_repo_context("cpython", snippets, "Lib/textwrap.py", count, 200, QWEN25_CODER.repo)
    assert qwen == "<|repo_name|>cpython\n<|file_sep|>textwrap_helpers.py\ndef dedent(text):\n    ...\n<|file_sep|>Lib/textwrap.py\n"
    starcoder = format_repo_context("cpython", snippets, "Lib/textwrap.py", count, 200, STARCODER2.repo)
    assert starcoder == "<repo_name>cpython<file_sep>textwrap_helpers.py\ndef dedent(text):\n    ...\n<file_sep>Lib/textwrap.py\n"
    assert DEEPSEEK_CODER.repo is CODELLAMA.repo is CODESTRAL.repo is None


@pytest.mark.parametrize(
    "name, vocabulary, model_type, family",
    [
        ("Qwen/Qwen2.5-Coder-7B", (), "", QWEN25_CODER),
        ("my-finetune", ("<|fim_prefix|>", "<|endoftext|>"), "qwen2", QWEN25_CODER),
        ("bigcode/starcoder2-15b", (), "", STARCODER2),
        ("local", ("<fim_prefix>", "<file_sep>"), "", STARCODER2),
        ("deepseek-ai/deepseek-coder-6.7b-base", (), "", DEEPSEEK_CODER),
        ("deepseek-ai/DeepSeek-Coder-V2-Lite-Base", (), "", DEEPSEEK_CODER_V2),
        ("local", ("<｜fim▁begin｜>",), "deepseek_v2", DEEPSEEK_CODER_V2),
        ("codellama/CodeLlama-7b-hf", (), "", CODELLAMA),
        ("local", ("▁<PRE>", "▁<SUF>"), "llama", CODELLAMA),
        ("mistralai/Codestral-22B-v0.1", (), "", CODESTRAL),
    ],
)
def test_the_family_is_found_from_the_tokenizer_the_config_or_the_name(name, vocabulary, model_type, family):
    assert detect_family(name, vocabulary, model_type) is family


def test_an_unknown_model_asks_for_the_family_key():
    with pytest.raises(UnknownFamilyError, match='set family = "..."'):
        detect_family("gpt-5-turbo")


def test_instruct_models_of_families_without_instruct_fim_get_a_warning():
    assert "not trained to fill in the middle" in fim_warning(DEEPSEEK_CODER, "deepseek-coder-6.7b-instruct")
    assert fim_warning(DEEPSEEK_CODER, "deepseek-coder-6.7b-base") == ""
    assert fim_warning(QWEN25_CODER, "Qwen2.5-Coder-0.5B-Instruct") == ""  # Qwen's Instruct models do FIM
    assert fim_warning(CODESTRAL, "Codestral-22B-v0.1") == ""
