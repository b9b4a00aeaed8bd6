"""Model families as data: how each family of code models is prompted and when it stops.

A family says
- its fill-in-the-middle format: the order (PSM: prefix, suffix, middle; SPM: suffix first) and the
  text around the prefix and the suffix;
- the tokens and strings that end a completion;
- its repository-level format (the files of the repository in front of the prompt), if it has one;
- where its chat template comes from;
- whether its instruct models were trained for FIM too.

Each entry follows the model card (or the reference code) of that family; the comments cite it.
The family of a model is found from its tokenizer's special tokens, from its config, or from its
name (`detect_family`), or set with `family = "..."` in the role's config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal


@dataclass(frozen=True)
class FimFormat:
    order: Literal["psm", "spm"]
    prefix_marker: str  # put before the prefix
    suffix_marker: str  # put before the suffix
    middle_marker: str  # put after both; the model writes the middle after it ("" in Codestral's SPM)

    def render(self, prefix: str, suffix: str) -> str:
        if self.order == "psm":
            return f"{self.prefix_marker}{prefix}{self.suffix_marker}{suffix}{self.middle_marker}"
        return f"{self.suffix_marker}{suffix}{self.prefix_marker}{prefix}{self.middle_marker}"

    def prefix_offset(self, suffix: str) -> int:
        """Where the prefix starts in `render(prefix, suffix)`."""
        return len(self.prefix_marker) if self.order == "psm" else len(self.suffix_marker) + len(suffix) + len(self.prefix_marker)


@dataclass(frozen=True)
class RepoFormat:
    """Files of the repository before the current file, each behind a header with its path."""

    repo_marker: str  # before the repository's name
    after_repo_name: str  # between the name and the first file
    file_marker: str  # before each file's path; the path is followed by a line break

    def header(self, repo_name: str) -> str:
        return f"{self.repo_marker}{repo_name}{self.after_repo_name}"

    def file_header(self, path: str) -> str:
        return f"{self.file_marker}{path}\n"


@dataclass(frozen=True)
class ModelFamily:
    name: str
    fim: FimFormat | None  # None: the family does not fill in the middle
    stop_tokens: tuple[str, ...]  # special tokens that end a completion (looked up in the vocabulary)
    stop_strings: tuple[str, ...]  # the same and more as text, for servers that print special tokens
    chat_stop: tuple[str, ...]  # the tokens that end a chat answer, also sent as strings
    repo: RepoFormat | None
    # "tokenizer": the model's own chat template (tokenizer_config.json / chat_template.jinja);
    # "none": the family's models have none (base models), so chat needs another model.
    chat_template: Literal["tokenizer", "none"]
    instruct_fim: bool  # its instruct models were trained to fill in the middle as well
    # Detection: special tokens only this family's tokenizers have (any one is enough), config
    # model_types, and a pattern of model names (for a remote model known only by its name).
    marker_tokens: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    name_pattern: str = ""

    def stop_token_ids(self, vocabulary: dict[str, int]) -> tuple[int, ...]:
        """The ids of the stop tokens this tokenizer has."""
        return tuple(sorted({vocabulary[token] for token in self.stop_tokens if token in vocabulary}))


# Qwen2.5-Coder (Qwen2.5-Coder technical report, section 3; the model card's "fill in the middle"
# and "repository level code completion" examples). The Instruct models keep FIM.
QWEN25_CODER = ModelFamily(
    name="qwen2.5-coder",
    fim=FimFormat("psm", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    stop_tokens=("<|endoftext|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"),
    stop_strings=("<|endoftext|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"),
    chat_stop=("<|im_end|>", "<|endoftext|>", "<|im_start|>"),
    repo=RepoFormat("<|repo_name|>", "\n", "<|file_sep|>"),
    chat_template="tokenizer",
    instruct_fim=True,
    marker_tokens=("<|fim_prefix|>",),
    name_pattern=r"qwen2\.5-coder|qwen2_5_coder|qwen-coder",
)

# StarCoder2 (bigcode/starcoder2 model card; the StarCoder2 paper, section 5: repository context as
# <repo_name>name<file_sep>path\ncode...). Base models only: no chat template.
STARCODER2 = ModelFamily(
    name="starcoder2",
    fim=FimFormat("psm", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    stop_tokens=("<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>", "<file_sep>"),
    stop_strings=("<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<file_sep>", "<repo_name>"),
    chat_stop=("<|endoftext|>",),
    repo=RepoFormat("<repo_name>", "", "<file_sep>"),
    chat_template="none",
    instruct_fim=False,
    marker_tokens=("<fim_prefix>",),
    model_types=("starcoder2",),
    name_pattern=r"starcoder2",
)

# DeepSeek-Coder 1.x (deepseek-ai/DeepSeek-Coder README, "Code Insertion"): the markers are written
# with fullwidth bars and U+2581. Its repository example puts paths in comments, not tokens.
# The Instruct models end turns with <|EOT|>; they are not documented for FIM.
DEEPSEEK_CODER = ModelFamily(
    name="deepseek-coder",
    fim=FimFormat("psm", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    stop_tokens=("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    stop_strings=("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    chat_stop=("<|EOT|>", "<｜end▁of▁sentence｜>"),
    repo=None,
    chat_template="tokenizer",
    instruct_fim=False,
    marker_tokens=("<｜fim▁begin｜>",),
    name_pattern=r"deepseek-coder(?!-v2)",
)

# DeepSeek-Coder-V2 (deepseek-ai/DeepSeek-Coder-V2 README, "Code Insertion"): the same markers as
# 1.x on a new architecture (model_type deepseek_v2) and chat format.
DEEPSEEK_CODER_V2 = ModelFamily(
    name="deepseek-coder-v2",
    fim=DEEPSEEK_CODER.fim,
    stop_tokens=("<｜end▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    stop_strings=("<｜end▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    chat_stop=("<｜end▁of▁sentence｜>",),
    repo=None,
    chat_template="tokenizer",
    instruct_fim=False,
    model_types=("deepseek_v2",),
    name_pattern=r"deepseek-coder-v2",
)

# Code Llama (facebookresearch/codellama generation.py, infilling_prompt_tokens; transformers'
# CodeLlamaTokenizer: "<PRE> {prefix} <SUF>{suffix} <MID>", ending with <EOT>). Meta's README:
# the 7B and 13B models, Instruct included, fill in the middle.
CODELLAMA = ModelFamily(
    name="codellama",
    fim=FimFormat("psm", "<PRE> ", " <SUF>", " <MID>"),
    stop_tokens=("<EOT>", "▁<EOT>", "</s>"),
    stop_strings=("<EOT>", "</s>"),
    chat_stop=("</s>", "<EOT>"),
    repo=None,
    chat_template="tokenizer",
    instruct_fim=True,
    marker_tokens=("▁<PRE>", "<PRE>"),
    name_pattern=r"codellama|code-llama",
)

# Codestral (mistral-common's FIMRequest encoding: [SUFFIX]suffix[PREFIX]prefix, the middle follows
# the prefix; Mistral's FIM API docs). One model for chat and FIM.
CODESTRAL = ModelFamily(
    name="codestral",
    fim=FimFormat("spm", "[PREFIX]", "[SUFFIX]", ""),
    stop_tokens=("</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"),
    stop_strings=("</s>", "[PREFIX]", "[SUFFIX]"),
    chat_stop=("</s>",),
    repo=None,
    chat_template="tokenizer",
    instruct_fim=True,
    marker_tokens=("[SUFFIX]", "[PREFIX]"),
    name_pattern=r"codestral",
)

FAMILIES: dict[str, ModelFamily] = {
    family.name: family for family in (QWEN25_CODER, STARCODER2, DEEPSEEK_CODER, DEEPSEEK_CODER_V2, CODELLAMA, CODESTRAL)
}


class UnknownFamilyError(ValueError):
    """The model's family could not be told; the message says how to set it."""


def family_named(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamilyError(f"unknown model family {name!r}; known families are {', '.join(FAMILIES)}") from None


def detect_family(name: str = "", vocabulary: Iterable[str] = (), model_type: str = "") -> ModelFamily:
    """The family of a model from what is known of it: the special tokens of its vocabulary are the
    surest sign, then its config's model_type, then its name. UnknownFamilyError if none fits."""
    tokens = set(vocabulary)
    by_config = [family for family in FAMILIES.values() if model_type and model_type in family.model_types]
    if by_config:
        return by_config[0]
    for family in FAMILIES.values():
        if any(token in tokens for token in family.marker_tokens):
            return family
    for family in FAMILIES.values():
        if family.name_pattern and re.search(family.name_pattern, name, re.IGNORECASE):
            return family
    raise UnknownFamilyError(
        f"cannot tell which model family {name or 'this model'!r} belongs to; set family = \"...\" in its "
        f"[models.ROLE] table, one of {', '.join(FAMILIES)}"
    )


def is_instruct(name: str) -> bool:
    return re.search(r"instruct|-chat\b|-it\b", name, re.IGNORECASE) is not None


def fim_warning(family: ModelFamily, model_name: str) -> str:
    """A warning for an instruct model asked to fill in the middle, unless its family does FIM."""
    if family.fim is None:
        return f"{model_name} ({family.name}) does not fill in the middle; use a FIM-trained model for completions"
    if is_instruct(model_name) and not family.instruct_fim:
        return (
            f"{model_name} is an instruct model, and {family.name}'s instruct models are not trained to fill in "
            "the middle: completions will be poor. Use its base model for single_line and multi_line."
        )
    return ""
