"""What to ask the model for at a cursor: nothing, the rest of the line, or a block of lines.

Decided from the text around the cursor alone, with the language's tree-sitter grammar where we
ship one and indentation/bracket heuristics otherwise. Each rule is a small function that either
decides or passes; `decide_mode` asks them in order, and the first that decides wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

from tree_sitter import Node, Tree

from fimble.completion.syntax import (
    CLOSERS,
    CursorText,
    ancestors,
    block_opener,
    code_without_strings,
    ends_in_comment,
    indent_width,
    is_comment,
    is_identifier_char,
    is_string,
    line_comment_marker,
    open_quote,
    parse,
    parse_with_insertion,
    uses_indentation_blocks,
)


class CompletionMode(str, Enum):
    NONE = "none"
    SINGLE_LINE = "single_line"
    MULTI_LINE = "multi_line"


@dataclass(frozen=True)
class _Cursor(CursorText):
    """The cursor, with what the rules ask about it computed once."""

    explicit: bool = False

    @cached_property
    def offset(self) -> int:
        """The cursor as a byte offset into the tree."""
        return len(self.prefix.encode("utf-8"))

    @cached_property
    def tree(self) -> Tree | None:
        return parse(self.prefix + self.suffix, self.language_id)

    def nodes_before(self) -> list[Node]:
        """The node holding the character just before the cursor, then its ancestors."""
        if self.tree is None or self.offset == 0:
            return []
        return list(ancestors(self.tree.root_node.descendant_for_byte_range(self.offset - 1, self.offset)))


Rule = Callable[[_Cursor], CompletionMode | None]


def decide_mode(prefix: str, suffix: str, language_id: str, explicit: bool = False) -> CompletionMode:
    """The completion to request with the cursor between `prefix` and `suffix` (the whole document).

    `explicit` is a user's invoke (a key binding) rather than typing: it may widen what is asked for.
    """
    cursor = _Cursor(prefix, suffix, language_id, explicit)
    for rule in _RULES:
        mode = rule(cursor)
        if mode is not None:
            return mode
    return CompletionMode.SINGLE_LINE


# --- The rules, in the order they are asked ------------------------------------------------------


def _in_comment(cursor: _Cursor) -> CompletionMode | None:
    """Comments are prose: suggestions there get in the way while typing, so only on request."""
    if not _cursor_in_comment(cursor):
        return None
    return CompletionMode.SINGLE_LINE if cursor.explicit else CompletionMode.NONE


def _inside_word(cursor: _Cursor) -> CompletionMode | None:
    """`pri|nt`: text inserted here would split a word, so only on request."""
    if not is_identifier_char(cursor.line_after[:1]):
        return None
    return CompletionMode.SINGLE_LINE if cursor.explicit else CompletionMode.NONE


def _in_string(cursor: _Cursor) -> CompletionMode | None:
    """A string ends on its line (a docstring's next sentence too), whatever ends its line."""
    return CompletionMode.SINGLE_LINE if _cursor_in_string(cursor) else None


def _after_block_opener(cursor: _Cursor) -> CompletionMode | None:
    """`def f(x):|` or `if (x) {|}`: the body is still to be written, so ask for lines."""
    code = code_without_strings(cursor.line_before, cursor.language_id).rstrip()
    rest = cursor.line_after.strip(CLOSERS + ";, \t")
    if rest or not code.endswith(block_opener(cursor.language_id)):
        return None
    if uses_indentation_blocks(cursor.language_id) and not _colon_ends_block_header(cursor, code):
        return None
    return CompletionMode.MULTI_LINE


def _after_code_on_line(cursor: _Cursor) -> CompletionMode | None:
    """Mid-statement (also mid-identifier, `foo.ba|`): finish this line."""
    return CompletionMode.SINGLE_LINE if cursor.line_before.strip() else None


def _on_blank_line(cursor: _Cursor) -> CompletionMode:
    """An empty body wants lines; between statements one line, unless the user asked."""
    if _in_empty_body(cursor) or cursor.explicit:
        return CompletionMode.MULTI_LINE
    return CompletionMode.SINGLE_LINE


_RULES: tuple[Rule, ...] = (
    _in_comment,
    _inside_word,
    _in_string,
    _after_block_opener,
    _after_code_on_line,
    _on_blank_line,
)


# --- Comments and strings ------------------------------------------------------------------------


def _cursor_in_comment(cursor: _Cursor) -> bool:
    if cursor.tree is None:
        return _comment_before_cursor_by_text(cursor)
    return any(is_comment(node) and _comment_reaches_cursor(node, cursor.offset) for node in cursor.nodes_before())


def _comment_reaches_cursor(comment: Node, offset: int) -> bool:
    # Right after a closed `/* ... */` the cursor is back in code; at the end of a line comment
    # it is still in the comment.
    return offset < comment.end_byte or not (comment.text or b"").endswith(b"*/")


def _comment_before_cursor_by_text(cursor: _Cursor) -> bool:
    if ends_in_comment(cursor.line_before, cursor.language_id):
        return True
    if line_comment_marker(cursor.language_id) != "//":
        return False
    return cursor.prefix.rfind("/*") > cursor.prefix.rfind("*/")  # an unclosed block comment


def _cursor_in_string(cursor: _Cursor) -> bool:
    # The line's own quotes catch a string still being typed, which the grammar parses as an error.
    if open_quote(cursor.line_before, cursor.language_id) is not None:
        return True
    return any(is_string(node) and node.start_byte < cursor.offset < node.end_byte for node in cursor.nodes_before())


# --- Block openers and empty bodies --------------------------------------------------------------

# Python statements and clauses whose header ends with the ':' before a block.
_PYTHON_BLOCK_HEADERS = frozenset(
    {
        "function_definition", "class_definition", "if_statement", "elif_clause", "else_clause",
        "for_statement", "while_statement", "with_statement", "try_statement", "except_clause",
        "except_group_clause", "finally_clause", "match_statement", "case_clause",
    }
)  # fmt: skip

# When the grammar can't tell (the header itself has an error), a header starts with a keyword, or
# with a closing bracket that ends a header spread over lines (`) -> int:`).
_PYTHON_HEADER_LINE = re.compile(
    r"\s*(?:[)\]]|(?:async\s+)?(?:def|class|if|elif|else|for|while|with|try|except|finally|match|case)\b)"
)


def _colon_ends_block_header(cursor: _Cursor, code: str) -> bool:
    """Is the ':' that ends `code` (the cursor line) a block header's, not a dict's or a lambda's?"""
    if cursor.tree is not None:
        # `code` has its strings blanked but keeps their length in characters, not in bytes.
        before_colon = cursor.prefix[: len(cursor.prefix) - len(cursor.line_before) + len(code) - 1]
        colon_at = len(before_colon.encode("utf-8"))
        colon = cursor.tree.root_node.descendant_for_byte_range(colon_at, colon_at + 1)
        if colon is not None and colon.type == ":" and colon.parent is not None and colon.parent.type != "ERROR":
            return colon.parent.type in _PYTHON_BLOCK_HEADERS
    return _PYTHON_HEADER_LINE.match(code) is not None


def _in_empty_body(cursor: _Cursor) -> bool:
    """Is the blank cursor line in a block that has no statements yet (comments and a docstring
    aside)? A missing body (`def f():` then the cursor at column 0) counts as empty."""
    block = _enclosing_block(cursor)
    if block is not None:
        return not _statements(block, cursor)
    return _follows_opener_without_body(cursor)


def _enclosing_block(cursor: _Cursor) -> Node | None:
    """The block the blank cursor line belongs to, from the grammar; None at top level or when the
    grammar can't tell."""
    if cursor.tree is None:
        return None
    if uses_indentation_blocks(cursor.language_id):
        return _python_block_at(cursor)
    return next((node for node in cursor.nodes_before() if _is_braced_around(node, cursor.offset)), None)


_PLACEHOLDER = "pass"


def _python_block_at(cursor: _Cursor) -> Node | None:
    # In Python the block is decided by the cursor's indentation, which the tree of the blank line
    # can't show: parse with a statement typed at the cursor and see where it lands.
    assert cursor.tree is not None
    tree = parse_with_insertion(cursor.tree, cursor.prefix, _PLACEHOLDER, cursor.suffix, cursor.language_id)
    if tree is None:
        return None
    statement = tree.root_node.named_descendant_for_byte_range(cursor.offset, cursor.offset + len(_PLACEHOLDER))
    if statement is None or statement.type != "pass_statement" or statement.start_byte != cursor.offset:
        return None
    block = statement.parent
    return block if block is not None and block.type == "block" else None


def _is_braced_around(node: Node, offset: int) -> bool:
    """A `{ ... }` node (a statement block, class body, object literal) with the cursor inside."""
    if node.child_count < 2 or not node.start_byte < offset < node.end_byte:
        return False
    first, last = node.children[0], node.children[-1]
    return first.type == "{" and last.type == "}" and not last.is_missing


def _statements(block: Node, cursor: _Cursor) -> list[Node]:
    """The block's statements, leaving out comments, a leading docstring and our placeholder."""
    statements = [
        node
        for node in block.named_children
        if not is_comment(node) and not (node.type == "pass_statement" and node.start_byte == cursor.offset)
    ]
    if statements and _is_docstring(statements[0]):
        statements = statements[1:]
    return statements


def _is_docstring(node: Node) -> bool:
    return node.type == "expression_statement" and node.named_child_count == 1 and is_string(node.named_children[0])


def _follows_opener_without_body(cursor: _Cursor) -> bool:
    """Heuristic: the last code line before the cursor opens a block, and no line after the cursor
    is indented into it (or, for braces, the next code closes it)."""
    lines_before = cursor.prefix.split("\n")[:-1]
    opener = next((line for line in reversed(lines_before) if _code(line, cursor)), None)
    if opener is None:
        return False
    code = _code(opener, cursor)
    if not code.endswith(block_opener(cursor.language_id)):
        return False
    if uses_indentation_blocks(cursor.language_id) and _PYTHON_HEADER_LINE.match(code) is None:
        return False
    rest_of_line = cursor.line_after.strip()
    lines_after = ([rest_of_line] if rest_of_line else []) + cursor.suffix.split("\n")[1:]
    next_code = next((_code(line, cursor) for line in lines_after if _code(line, cursor)), None)
    if next_code is None:
        return True
    return next_code.lstrip().startswith("}") or indent_width(next_code) <= indent_width(opener)


def _code(line: str, cursor: _Cursor) -> str:
    """The line without its comment and trailing blanks; "" for a blank or comment-only line."""
    code = code_without_strings(line, cursor.language_id).rstrip()
    return code if code.strip() else ""
