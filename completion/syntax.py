"""Tree-sitter grammars, and the lexical facts about a language that the completion path needs.

Grammars are loaded in one place, `context/languages.py` (one PyPI wheel per language, nothing
downloaded or compiled at run time). A language without a grammar gets `None`; its callers fall
back to the text heuristics at the end of this module.

Trees are parsed from UTF-8, so every offset into a tree is a byte offset, not a character index.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from tree_sitter import Language, Node, Parser, Tree

from fimble.context import languages

# The languages whose trees the completion path's checks (trigger, post-processing) were tested
# on. The index parses more (Java, C, C++, Ruby); here those keep the text heuristics until tested:
# an unterminated C `/* ...` parses as an ERROR node, not a comment, so the trigger would not see it.
_COMPLETION_LANGUAGES = frozenset(
    {"python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust"}
)


def language_for(language_id: str) -> Language | None:
    """The grammar for an LSP languageId, or None when the completion path uses no grammar for it."""
    return languages.language_for(language_id) if language_id in _COMPLETION_LANGUAGES else None


def parse(text: str, language_id: str) -> Tree | None:
    """Parse a whole document; None when the language has no grammar here.

    Each keystroke parses its document again, and consecutive keystrokes' documents differ by a
    few characters: the last tree parsed (one per language) is edited to the new text and reparsed
    incrementally, which tree-sitter answers with the same tree as a fresh parse. On requests'
    sessions.py (24,500 characters) a fresh parse takes 2.3 ms and a keystroke's reparse 0.18.
    """
    language = language_for(language_id)
    if language is None:
        return None
    source = text.encode("utf-8")
    last = _last_parse.get(language_id)
    if last is None:
        tree = Parser(language).parse(source)
    else:
        tree = Parser(language).parse(source, edited_to(last, source))
    _last_parse[language_id] = _Parsed(source, tree)
    return tree


@dataclass(frozen=True)
class _Parsed:
    source: bytes
    tree: Tree


# The last document parsed, per language. Read and replaced whole, so a parse on another thread
# costs at worst a less incremental parse, never a wrong tree.
_last_parse: dict[str, _Parsed] = {}


def edited_to(parsed: _Parsed, source: bytes) -> Tree:
    """A copy of `parsed.tree` with the edit from its source to `source` applied: the span between
    their common start and common end, replaced."""
    old = parsed.source
    start = _common_prefix_length(old, source)
    end = _common_prefix_length(old[start:][::-1], source[start:][::-1])
    old_end, new_end = len(old) - end, len(source) - end
    edited = parsed.tree.copy()
    edited.edit(
        start_byte=start,
        old_end_byte=old_end,
        new_end_byte=new_end,
        start_point=_point(old, start),
        old_end_point=_point(old, old_end),
        new_end_point=_point(source, new_end),
    )
    return edited


def _common_prefix_length(a: bytes, b: bytes) -> int:
    """By bisection over slice comparisons (memcmp in C): microseconds for a 100 KB document,
    where a loop over its bytes in Python takes milliseconds."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _point(source: bytes, offset: int) -> tuple[int, int]:
    """Tree-sitter's (row, byte column) of a byte offset."""
    return source.count(b"\n", 0, offset), offset - (source.rfind(b"\n", 0, offset) + 1)


def parse_with_insertion(tree: Tree, before: str, inserted: str, after: str, language_id: str) -> Tree | None:
    """Parse `before + inserted + after`, reusing `tree` (the parse of `before + after`).

    Incremental: 0.6 ms instead of 17 ms for a 2,600-line file (argparse.py), which matters when
    post-processing tries several cuts of one completion.
    """
    language = language_for(language_id)
    if language is None:
        return None
    source = (before + inserted + after).encode("utf-8")
    start = len(before.encode("utf-8"))
    end = start + len(inserted.encode("utf-8"))
    edited = tree.copy()
    edited.edit(
        start_byte=start,
        old_end_byte=start,
        new_end_byte=end,
        start_point=_point(source, start),
        old_end_point=_point(source, start),
        new_end_point=_point(source, end),
    )
    return Parser(language).parse(source, edited)


def error_count(tree: Tree) -> int:
    """How many ERROR and MISSING nodes the tree has: a measure of how broken the text is."""
    return sum(1 for node in _error_subtrees(tree.root_node) if node.is_error or node.is_missing)


def _error_subtrees(node: Node) -> Iterator[Node]:
    # `has_error` is set on every ancestor of an ERROR or MISSING node, so clean subtrees are skipped.
    if not node.has_error and not node.is_missing:
        return
    yield node
    for child in node.children:
        yield from _error_subtrees(child)


def ancestors(node: Node | None) -> Iterator[Node]:
    """The node itself, then its parents up to the root."""
    current: Node | None = node
    while current is not None:
        yield current
        current = current.parent


def is_comment(node: Node) -> bool:
    # comment (Python, JS/TS, Go), line_comment / block_comment / doc_comment (Rust).
    return "comment" in node.type


# Node types of string and character literals across the shipped grammars.
_STRING_TYPES = frozenset(
    {
        "string",  # Python, JavaScript, TypeScript
        "template_string",  # JavaScript, TypeScript
        "interpreted_string_literal",  # Go
        "raw_string_literal",  # Go, Rust
        "rune_literal",  # Go
        "string_literal",  # Rust
        "char_literal",  # Rust
    }
)


def is_string(node: Node) -> bool:
    return node.type in _STRING_TYPES


@dataclass(frozen=True)
class CursorText:
    """The document split at the cursor, as the trigger and the post-processing see it."""

    prefix: str  # all the text before the cursor
    suffix: str  # all the text after it
    language_id: str

    @cached_property
    def line_before(self) -> str:
        """The cursor's line up to the cursor."""
        return self.prefix.rpartition("\n")[2]

    @cached_property
    def line_after(self) -> str:
        """The cursor's line from the cursor on, without a CRLF document's "\\r"."""
        return self.suffix.partition("\n")[0].removesuffix("\r")


# ---------------------------------------------------------------------------------------------
# Text heuristics: what every language gets, and all that a language without a grammar gets.
# ---------------------------------------------------------------------------------------------

# Languages whose blocks are delimited by indentation after a line ending in ":".
# Every other language is treated as brace-delimited.
_INDENTATION_LANGUAGES = frozenset({"python", "cython"})

_HASH_COMMENT_LANGUAGES = frozenset(
    {
        "python", "cython", "shellscript", "ruby", "perl", "r", "yaml", "toml", "makefile",
        "dockerfile", "powershell", "elixir", "coffeescript", "julia", "nim",
    }
)  # fmt: skip
_DASH_COMMENT_LANGUAGES = frozenset({"lua", "sql", "haskell", "elm"})

CLOSERS = ")]}"
OPENERS = "([{"
QUOTES = "\"'`"


def uses_indentation_blocks(language_id: str) -> bool:
    """True for Python-like languages, False for brace languages (the default for unknown ones)."""
    return language_id in _INDENTATION_LANGUAGES


def block_opener(language_id: str) -> str:
    """The character that ends a line opening a block: ':' in Python, '{' elsewhere."""
    return ":" if uses_indentation_blocks(language_id) else "{"


def line_comment_marker(language_id: str) -> str:
    if language_id in _HASH_COMMENT_LANGUAGES:
        return "#"
    if language_id in _DASH_COMMENT_LANGUAGES:
        return "--"
    return "//"


def is_identifier_char(char: str) -> bool:
    # isalnum() is Unicode-aware, so `größe` and `変数` are identifiers too; `$` is one in JS.
    return len(char) == 1 and (char.isalnum() or char in "_$")


def indent_width(line: str) -> int:
    """Columns of leading whitespace, tabs at Python's tab stops of 8."""
    whitespace = line[: len(line) - len(line.lstrip(" \t"))]
    return len(whitespace.expandtabs(8))


def leading_whitespace(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def indentation_after_enter(line: str, language_id: str) -> str:
    """The indentation an editor gives the line after `line` when Enter is pressed at its end: the
    same, one level deeper after a block opener or an open bracket (a level is a tab where the line
    is indented with tabs, else 4 spaces)."""
    indentation = leading_whitespace(line)
    code = line.rstrip()
    if code and (code.endswith(block_opener(language_id)) or code[-1] in OPENERS):
        indentation += "\t" if indentation.startswith("\t") else "    "
    return indentation


def code_without_strings(line: str, language_id: str, state: str | None = None) -> str:
    """The line with the insides of strings and comments blanked to spaces (same length, so
    columns still line up): what is left is code, for counting brackets and finding colons."""
    return lex_line(line, language_id, state)[0]


def open_quote(line: str, language_id: str) -> str | None:
    """The quote still open at the end of `line` (the cursor is in a string), if any."""
    state = lex_line(line, language_id)[1]
    return state if state is not None and state[0] in QUOTES else None


def ends_in_comment(line: str, language_id: str) -> bool:
    """Is the end of `line` inside a comment (one that starts on this line)?"""
    return lex_line(line, language_id)[1] in (line_comment_marker(language_id), "/*")


def next_line_state(state: str | None) -> str | None:
    """What a line starts inside, given what the previous line ended inside: only triple-quoted
    strings, template and raw strings in backticks, and block comments go on past a line end."""
    return state if state in ('"""', "'''", "`", "/*") else None


def lex_line(line: str, language_id: str, state: str | None = None) -> tuple[str, str | None]:
    """(the line with strings and comments blanked, what is open at its end).

    `state` is what the line starts inside (from `next_line_state`): None for code, or the
    delimiter that opened a string or comment. A small lexer: quotes, Python's triple quotes,
    backslash escapes, line and block comments. Strings that need more (Rust's `r#"..."#`) are
    left to the grammar.
    """
    marker = line_comment_marker(language_id)
    kept: list[str] = []
    index = 0
    while index < len(line):
        if state is None:
            state = _opening_at(line, index, language_id)
            if state is None:
                kept.append(line[index])
                index += 1
                continue
            width = len(state)
        elif state == marker:
            width = len(line) - index  # a line comment runs to the end of the line
        elif line[index] == "\\" and state[0] in QUOTES:
            width = 2  # an escaped character, perhaps the quote
        elif line.startswith("*/" if state == "/*" else state, index):
            width, state = (2 if state == "/*" else len(state)), None
        else:
            width = 1
        kept.append(" " * len(line[index : index + width]))
        index += width
    return "".join(kept), state


def _opening_at(line: str, index: int, language_id: str) -> str | None:
    """The delimiter of a string or comment that opens at `index` in code, if any."""
    marker = line_comment_marker(language_id)
    if line.startswith(marker, index):
        return marker
    if marker == "//" and line.startswith("/*", index):
        return "/*"
    char = line[index]
    if char not in QUOTES or (char == "'" and _is_rust_lifetime(line, index, language_id)):
        return None
    triple = char * 3
    return triple if uses_indentation_blocks(language_id) and line.startswith(triple, index) else char


def _is_rust_lifetime(line: str, index: int, language_id: str) -> bool:
    # `'a` in `&'a str` opens no character literal; a char literal closes within three characters.
    return language_id == "rust" and "'" not in line[index + 1 : index + 4]
