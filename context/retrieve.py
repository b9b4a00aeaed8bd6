"""Repository context for a cursor: snippets from other files, ranked, deduplicated, trimmed to a
token budget and formatted the way the model family was trained on repository-level code
(models.families.RepoFormat); for Qwen2.5-Coder:

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

import builtins
import re
from dataclasses import dataclass
from typing import Callable, Iterable

from fimble.models.families import QWEN25_CODER, RepoFormat

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
    # prefix cache across keystrokes: definitions of the file's imports (0), of the names near the
    # cursor (1), then similar chunks of open files (2).
    stability: int = 0


def identifiers(text: str) -> frozenset[str]:
    """The identifiers of a text, without keywords and one-letter names."""
    return frozenset(identifiers_in_order(text))


def identifiers_in_order(text: str) -> list[str]:
    return [word for word in _IDENTIFIER.findall(text) if len(word) > 1 and word not in _COMMON_WORDS]


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
                scored.append(Snippet(path, chunk, score, stability=2))
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
    repo_name: str,
    snippets: list[Snippet],
    current_path: str,
    count_tokens: Callable[[str], int],
    budget_tokens: int,
    repo: RepoFormat = QWEN25_CODER.repo,
) -> str:
    """The context part of the prompt, within `budget_tokens`: the best snippets that fit, then
    placed in stable order (stability, path) so the prompt's start changes as little as possible."""
    header = repo.header(repo_name)
    tail = repo.file_header(current_path)
    used = count_tokens(header) + count_tokens(tail)
    chosen: list[Snippet] = []
    for snippet in sorted(snippets, key=lambda s: s.score, reverse=True):
        cost = count_tokens(_file_block(snippet, repo))
        if used + cost <= budget_tokens:
            chosen.append(snippet)
            used += cost
    if not chosen:
        return ""
    ordered = sorted(chosen, key=lambda s: (s.stability, s.path, s.text))
    blocks = [
        # Snippets of one file that end up next to each other share its header, as in a real file.
        _file_block(snippet, repo, header=index == 0 or ordered[index - 1].path != snippet.path)
        for index, snippet in enumerate(ordered)
    ]
    return header + "".join(blocks) + tail


def _file_block(snippet: Snippet, repo: RepoFormat, header: bool = True) -> str:
    text = snippet.text if snippet.text.endswith("\n") else snippet.text + "\n"
    return repo.file_header(snippet.path) + text if header else text


# --- Definitions through the index -----------------------------------------------------------------

_PY_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+[\w.]+[ \t]+import[ \t]+(?:\(([^)]*)\)|([^\n#]+))|import[ \t]+([\w.]+(?:[ \t]*,[ \t]*[\w.]+)*))",
    re.MULTILINE,
)
# Lines before the cursor whose identifiers count as "near" it.
NEAR_CURSOR_LINES = 12
MAX_DEFINITION_LINES = 12
# A long class shows at most this many member signatures (rich's Console has 80 methods).
MAX_MEMBER_LINES = 48


def names_near_cursor(prefix: str, suffix: str) -> list[str]:
    """Identifiers on the lines around the cursor, the closest first (the cursor's own line first),
    each followed by the class it probably holds (see `types_of`)."""
    before = prefix.split("\n")[-NEAR_CURSOR_LINES:]
    after_line = suffix.split("\n", 1)[0]
    declared = declared_types(prefix)
    ordered: list[str] = []
    for line in [before[-1] + after_line, *reversed(before[:-1])]:
        for name in reversed(identifiers_in_order(line)):
            for candidate in (name, *types_of(name, declared)):
                if candidate not in ordered:
                    ordered.append(candidate)
    return ordered


# `name: Class`, `name: "Class"` or `name = Class(`.
_DECLARED_TYPE = re.compile(r"\b([A-Za-z_]\w*)\s*(?::\s*[\"']?([A-Z]\w*)|=\s*([A-Z]\w*)\()")


def declared_types(prefix: str) -> dict[str, list[str]]:
    """The classes each name is annotated with or constructed from before the cursor, in order.
    One pass for all names: a regex per name near the cursor took 13 ms a keystroke on half of
    transformers' modeling_utils.py."""
    declared: dict[str, list[str]] = {}
    for name, annotated, constructed in _DECLARED_TYPE.findall(prefix[-20_000:]):
        declared.setdefault(name, []).append(annotated or constructed)
    return declared


def types_of(name: str, declared: dict[str, list[str]]) -> list[str]:
    """Classes a variable probably holds, so `client.` brings the methods `Client` defines: the
    class named in its annotation or constructor call before the cursor (`client: Client`,
    `self.client = Client(...)`, from `declared_types`), the latest first, and its own name in
    CamelCase (`prepared_request` -> `PreparedRequest`). Names that no file defines are dropped
    later by the index lookup."""
    if not name[0].islower():
        return []
    camel = "".join(part.capitalize() for part in name.strip("_").split("_") if part)
    return list(dict.fromkeys([*reversed(declared.get(name, [])), camel]))


def imported_names(text: str) -> list[str]:
    """Names a Python file imports (`from a import b, c` gives b and c; `import a.b` gives a)."""
    names: list[str] = []
    for parenthesized, from_names, modules in _PY_IMPORT.findall(text):
        for name in (parenthesized or from_names).replace("\n", " ").split(","):
            name = name.split(" as ")[0].strip()
            if name and name != "*":
                names.append(name)
        for module in (modules or "").split(","):
            if module.strip():
                names.append(module.strip().split(".")[0])
    return names


def definition_snippet(lines: list[str], start: int, end: int, members: list[tuple[int, str]]) -> str:
    """A definition as the model should see it: short ones whole; long ones as their header and
    the signatures of their members (a class's methods), so `client.` sees every method name."""
    if end - start + 1 <= MAX_DEFINITION_LINES:
        return "".join(lines[start : end + 1])
    header = lines[start : start + 2]
    # dict.fromkeys: overloads repeat a signature's first line.
    signatures = list(dict.fromkeys(line for line_number, line in sorted(members) if start < line_number <= end))
    return "".join(header + signatures[:MAX_MEMBER_LINES])


def imports_by_use(text: str, prefix: str) -> tuple[list[str], list[str], list[str]]:
    """The file's imported names in three groups: used nowhere in the file yet (likely what the
    cursor is about to use), used only below the cursor, and used above it. The file shows how it
    calls the names it uses; of the others it shows nothing but the name."""
    imported = list(dict.fromkeys(imported_names(text)))
    # One pass over each side into a set: a regex per name took 0.49 s on a 280 KB file with 152
    # imports (transformers' modeling_utils.py), on every keystroke.
    names_above = set(_IDENTIFIER.findall(_PY_IMPORT.sub("", prefix)))
    names_below = set(_IDENTIFIER.findall(text[len(prefix) :]))
    above = [name for name in imported if name in names_above]
    below = [name for name in imported if name not in names_above and name in names_below]
    nowhere = [name for name in imported if name not in above and name not in below]
    return nowhere, below, above


# Weights of the kinds of names whose definitions are looked up; within a kind the score falls
# with rank (1/(1+rank), counting only names the index resolves).
NEAR_WEIGHT, UNUSED_IMPORT_WEIGHT, IMPORT_USED_BELOW_WEIGHT, IMPORT_USED_ABOVE_WEIGHT = 2.0, 2.0, 1.0, 0.5
# Python's builtins are never looked up: a package's own `str = str` shim is no help.
_PYTHON_BUILTINS = frozenset(dir(builtins))


def definition_snippets(
    index, current_path: str, prefix: str, suffix: str, read_text: Callable[[str], str | None], imports: tuple[list[str], list[str], list[str]]
) -> list[Snippet]:
    """Definitions, found through the index (`context.indexer.WorkspaceIndex`), of the names near
    the cursor (the closest highest) and of the names the file imports (those not used yet higher;
    `imports` is `imports_by_use` of the file).

    The imports' definitions stay the same wherever the cursor is in the file, so they go first in
    the prompt (stability 0) and stay in the prefix cache as the cursor moves; the definitions of
    names near the cursor come after them (stability 1)."""
    skip = _PYTHON_BUILTINS if current_path.endswith(".py") else frozenset()
    near = [name for name in names_near_cursor(prefix, suffix) if name not in skip]
    nowhere, below, above = imports
    kinds = [
        (near, NEAR_WEIGHT, 1),
        ([name for name in nowhere if name not in near], UNUSED_IMPORT_WEIGHT, 0),
        ([name for name in below if name not in near], IMPORT_USED_BELOW_WEIGHT, 0),
        ([name for name in above if name not in near], IMPORT_USED_ABOVE_WEIGHT, 0),
    ]
    snippets: list[Snippet] = []
    for names, weight, stability in kinds:
        resolved = 0
        for name in names:
            bodies = definition_bodies(index, name, current_path, read_text)
            for body_path, body in bodies:
                snippets.append(Snippet(body_path, body, weight / (1 + resolved), stability))
            resolved += bool(bodies)
    return dedupe(sorted(snippets, key=lambda s: s.score, reverse=True))


def definition_bodies(index, name: str, current_path: str, read_text: Callable[[str], str | None]) -> list[tuple[str, str]]:
    """(path, snippet) of up to three definitions of `name` in other files."""
    bodies = []
    for definition in index.definitions(name)[:3]:
        if definition.path == current_path or (text := read_text(definition.path)) is None:
            continue
        symbol = definition.symbol
        lines = text.splitlines(keepends=True)
        members = [
            (fields["start_line"], lines[fields["start_line"]])
            for fields in index.entries[definition.path].symbols
            if symbol.start_line < fields["start_line"] <= symbol.end_line and fields["start_line"] < len(lines)
        ]
        bodies.append((definition.path, definition_snippet(lines, symbol.start_line, min(symbol.end_line, len(lines) - 1), members)))
    return bodies


# --- When context is worth its place ---------------------------------------------------------------


def names_the_file_lacks(index, current_path: str, prefix: str, suffix: str, unused_imports: list[str] | None = None) -> list[str]:
    """Names the cursor probably needs whose definitions the file does not show: the names on the
    cursor's line (and the classes they probably hold, `types_of`) that another file of the
    workspace defines and this one does not, then the names the file imports and uses nowhere yet
    (the cursor may be about to write their first use; `unused_imports`, the first group of
    `imports_by_use`, when the caller has it)."""
    skip = _PYTHON_BUILTINS if current_path.endswith(".py") else frozenset()
    entry = index.entries.get(current_path)
    defined_here = {fields["name"] for fields in entry.symbols} if entry is not None else set()

    def defined_elsewhere(name: str) -> bool:
        return name not in skip and name not in defined_here and any(d.path != current_path for d in index.definitions(name))

    line = prefix[prefix.rfind("\n") + 1 :] + suffix.split("\n", 1)[0]
    declared = declared_types(prefix)
    on_line = [name for word in reversed(identifiers_in_order(line)) for name in (word, *types_of(word, declared))]
    if unused_imports is None:
        unused_imports = imports_by_use(prefix + suffix, prefix)[0]
    return [name for name in dict.fromkeys(on_line + unused_imports) if defined_elsewhere(name)]


def repository_context(
    index,
    current_path: str,
    prefix: str,
    suffix: str,
    recent_files: dict[str, str],
    count_tokens: Callable[[str], int],
    budget_tokens: int,
    read_text: Callable[[str], str | None],
    repo: RepoFormat = QWEN25_CODER.repo,
    only_when_needed: bool = True,
) -> str:
    """The context slot for a cursor: definitions first, then chunks of recent files like the code
    before the cursor, within the budget, in the repository-level format.

    With `only_when_needed`, it is empty unless the cursor probably needs a name that the file does
    not define (`names_the_file_lacks`). Context that the line does not need only moves the model
    off the file's own patterns. On 180 ordinary lines of three libraries
    (benchmarks/ordinary_holes.py), context at every cursor changed 21 outcomes (8 gained, 13
    lost), and none of those 21 lines used a name that the context held and the file lacked
    (benchmarks/context_causes.py). The test holds at 1 of those 180 cursors and at 40 of the 60
    cross-file holes of benchmarks/repo_context.py, which call another file's function.
    """
    # Read once for the gate and the definitions: 8.5 ms on a 280 KB file (transformers' modeling_utils.py).
    imports = imports_by_use(prefix + suffix, prefix)
    if only_when_needed and not names_the_file_lacks(index, current_path, prefix, suffix, imports[0]):
        return ""
    definitions = definition_snippets(index, current_path, prefix, suffix, read_text, imports)
    others = {path: text for path, text in recent_files.items() if path != current_path}
    near_code = "\n".join(prefix.split("\n")[-NEAR_CURSOR_LINES:])
    chunks_like_here = similar_chunks(near_code, others)
    snippets = dedupe(definitions + chunks_like_here)
    return format_repo_context(index.root.name, snippets, current_path, count_tokens, budget_tokens, repo)
