"""Repository context for a cursor: snippets from other files, ranked, deduplicated, trimmed to a
token budget and formatted the way Qwen2.5-Coder was trained on repository-level code:

    <|repo_name|>name
    <|file_sep|>path/of/other.py
    ...snippet...
    <|file_sep|>path/of/current.py
    <|fim_prefix|>...<|fim_suffix|>...<|fim_middle|>

This module holds the plain parts: identifier sets, Jaccard similarity of chunks (the "recently
opened or edited files" source), ranking and formatting. The index (definitions and imports
resolved through tree-sitter tags) feeds `Snippet`s into the same ranking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

REPO_NAME = "<|repo_name|>"
FILE_SEP = "<|file_sep|>"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words that every file has: they make unrelated chunks look alike.
_COMMON_WORDS = frozenset(
    "self cls def class return if else elif for while in not and or is None True False import from as "
    "with try except finally raise pass break continue lambda yield async await const let var function "
    "new this null undefined true false int str float bool void public private static final package".split()
)


@dataclass(frozen=True)
class Snippet:
    path: str  # relative to the workspace root, posix separators
    text: str
    score: float
    # Lower ranks first in the prompt. Text that changes rarely goes first so it stays in the
    # prefix cache across keystrokes: definitions (0) before similar chunks of open files (1).
    stability: int = 0


def identifiers(text: str) -> frozenset[str]:
    """The identifiers of a text, without keywords and one-letter names."""
    return frozenset(word for word in _IDENTIFIER.findall(text) if len(word) > 1 and word not in _COMMON_WORDS)


def jaccard(left: frozenset[str], right: frozenset[str]) -> float:
    if not left or not right:
        return 0.0
    return len(left & right) / len(left | right)


def chunks(text: str, lines_per_chunk: int = 20, stride: int = 10) -> Iterable[tuple[int, str]]:
    """Overlapping windows of whole lines, with their first line number (0-based)."""
    lines = text.splitlines(keepends=True)
    for start in range(0, max(1, len(lines) - lines_per_chunk + stride), stride):
        window = lines[start : start + lines_per_chunk]
        if window:
            yield start, "".join(window)


def similar_chunks(query_text: str, files: dict[str, str], top_k: int = 4, min_score: float = 0.1) -> list[Snippet]:
    """The chunks of `files` (path -> text) most like `query_text` (the code around the cursor),
    best first, at most one per file region."""
    query = identifiers(query_text)
    scored: list[Snippet] = []
    for path, text in files.items():
        for _, chunk in chunks(text):
            score = jaccard(query, identifiers(chunk))
            if score >= min_score:
                scored.append(Snippet(path, chunk, score, stability=1))
    scored.sort(key=lambda snippet: snippet.score, reverse=True)
    return dedupe(scored)[:top_k]


def dedupe(snippets: list[Snippet]) -> list[Snippet]:
    """Drop a snippet whose text is already inside a better-ranked one (overlapping chunks, a
    definition also found as a similar chunk)."""
    kept: list[Snippet] = []
    for snippet in snippets:
        body = snippet.text.strip()
        if not any(body in other.text for other in kept):
            kept.append(snippet)
    return kept


def format_repo_context(
    repo_name: str, snippets: list[Snippet], current_path: str, count_tokens: Callable[[str], int], budget_tokens: int
) -> str:
    """The context part of the prompt, within `budget_tokens`: the best snippets that fit, then
    placed in stable order (stability, path) so the prompt's start changes as little as possible."""
    header = f"{REPO_NAME}{repo_name}\n"
    tail = f"{FILE_SEP}{current_path}\n"
    used = count_tokens(header) + count_tokens(tail)
    chosen: list[Snippet] = []
    for snippet in sorted(snippets, key=lambda s: s.score, reverse=True):
        cost = count_tokens(_file_block(snippet))
        if used + cost <= budget_tokens:
            chosen.append(snippet)
            used += cost
    if not chosen:
        return ""
    ordered = sorted(chosen, key=lambda s: (s.stability, s.path, s.text))
    return header + "".join(_file_block(snippet) for snippet in ordered) + tail


def _file_block(snippet: Snippet) -> str:
    text = snippet.text if snippet.text.endswith("\n") else snippet.text + "\n"
    return f"{FILE_SEP}{snippet.path}\n{text}"
