"""What to show of the model's text: cut to the requested extent, without what is already there.

The model writes past the point of interest (the next function, the closing brace the editor already
typed, a copy of the line below). Each step here removes one kind of excess, working on the
completion's lines; the first line continues the cursor's line.
"""

from __future__ import annotations

from functools import cached_property

from fimble.completion.syntax import (
    CLOSERS,
    CursorText,
    OPENERS,
    QUOTES,
    code_without_strings,
    error_count,
    indent_width,
    leading_whitespace,
    lex_line,
    next_line_state,
    parse,
    parse_with_insertion,
    uses_indentation_blocks,
)
from fimble.completion.trigger import CompletionMode
from fimble.models.stopping import cut_where_code_below_resumes


class _Surroundings(CursorText):
    @cached_property
    def lines_below(self) -> list[str]:
        """The non-blank lines after the cursor's line, right-stripped."""
        return [line.rstrip() for line in self.suffix.split("\n")[1:] if line.strip()]


def postprocess(completion: str, prefix: str, suffix: str, mode: CompletionMode, language_id: str) -> str:
    """The part of `completion` (raw model text for the cursor between `prefix` and `suffix`) to
    show: "" for nothing."""
    if mode is CompletionMode.NONE:
        return ""
    around = _Surroundings(prefix, suffix, language_id)
    lines = _keep_typed_indentation(completion.split("\n"), around)
    if mode is CompletionMode.SINGLE_LINE:
        lines = lines[:1]
    else:
        lines = _cut_at_block_end(lines, around)
    if mode is CompletionMode.MULTI_LINE:
        lines = cut_where_code_below_resumes(lines, next(iter(around.lines_below), ""))
    lines = _drop_trailing_blank_lines([line.rstrip() for line in lines])
    lines = _drop_doubled_space(lines, around)
    lines = _drop_repeated_suffix(lines, around)
    lines = _drop_duplicate_closers(lines, around)
    if mode is CompletionMode.MULTI_LINE:
        lines = _longest_prefix_that_parses(lines, around)
    text = "\n".join(lines)
    if not text.strip():
        return ""
    return _keep_line_after_apart(text, around) if mode is CompletionMode.MULTI_LINE else text


# --- The indentation typed at the cursor ---------------------------------------------------------


def _keep_typed_indentation(lines: list[str], around: _Surroundings) -> list[str]:
    """When only indentation precedes the cursor on its line, it was typed (by the user, or by the
    editor after Enter), and the completion does not add to it: a first line that starts with more
    whitespace loses it. (The 0.5B model began 11 of 150 ordinary lines of a library four or eight
    spaces deeper than the cursor.) When the next line is as deep, the model wrote its whole block
    too deep, and every line loses as much, so the block keeps its shape; otherwise only the first
    line was off."""
    typed = around.line_before
    if not typed or typed.strip(" \t") or not lines or not lines[0].strip():
        return lines
    first = lines[0]
    extra = first[: len(first) - len(first.lstrip(" \t"))]
    if not extra:
        return lines
    rest = lines[1:]
    following = next((line for line in rest if line.strip()), "")
    if following.startswith(typed + extra):
        rest = [line[len(extra) :] if line.startswith(extra) else line for line in rest]
    return [first[len(extra) :], *rest]


# --- Where a multi-line completion ends ----------------------------------------------------------


def _cut_at_block_end(lines: list[str], around: _Surroundings) -> list[str]:
    """The lines up to where the block at the cursor ends.

    The block ends at the first non-blank line indented less than its body, or at a bracket that
    closes one opened before the cursor (the `}` of the enclosing block). That bracket is left out
    when the document already has it after the cursor, and kept, ending the completion, otherwise.
    """
    body_indent = _body_indent(lines, around)
    depth = 0  # brackets the completion opened and has not closed yet
    state: str | None = None  # the multi-line string or comment the line starts in
    for index, line in enumerate(lines):
        code, end_state = lex_line(line, around.language_id, state)
        at_statement_level = state is None and depth == 0
        if at_statement_level and _dedented(line, index, body_indent, around) and not _starts_with_closer(code):
            return lines[:index]
        for column, char in enumerate(code):
            depth += (char in OPENERS) - (char in CLOSERS)
            if depth < 0:
                return _cut_at_enclosing_closer(lines, index, column, around)
        state = next_line_state(end_state)
    return lines


def _dedented(line: str, index: int, body_indent: int, around: _Surroundings) -> bool:
    """Is this a line of its own, not blank, and indented less than the block's body?"""
    if index == 0 and around.line_before.strip():
        return False  # the first line continues the cursor's line
    whole_line = around.line_before + line if index == 0 else line
    return bool(line.strip()) and indent_width(whole_line) < body_indent


def _body_indent(lines: list[str], around: _Surroundings) -> int:
    """The indentation of the block's statements: the cursor line's, or the model's first line's
    when the cursor is at column 0 of a blank line or after code (`def f():|`). In Python a body
    is deeper than its header, whatever the model wrote."""
    line_before = around.line_before
    if line_before and not line_before.strip():
        return indent_width(line_before)
    first = lines if not line_before else lines[1:]
    indent = next((indent_width(line) for line in first if line.strip()), 0)
    header = _python_header_above(around)
    return max(indent, indent_width(header) + 1) if header is not None else indent


def _python_header_above(around: _Surroundings) -> str | None:
    """The block header (`def f():`) that the cursor's line ends or follows, in Python."""
    if not uses_indentation_blocks(around.language_id):
        return None
    above = next((line for line in reversed(around.prefix.split("\n")) if line.strip()), "")
    return above if code_without_strings(above, around.language_id).rstrip().endswith(":") else None


def _starts_with_closer(code: str) -> bool:
    # A dedented line that closes a bracket opened before the cursor (`)` ending a multi-line
    # call, `}` ending the block) is the block's end, decided by the bracket rule instead.
    return code.lstrip()[:1] in tuple(CLOSERS)


def _cut_at_enclosing_closer(lines: list[str], index: int, column: int, around: _Surroundings) -> list[str]:
    if not _suffix_closes_enclosing_bracket(around):
        return lines[: index + 1]  # nothing after the cursor closes it: the model's closer is needed
    before_closer = lines[index][:column]
    if index > 0 and not before_closer.strip():
        return lines[:index]
    return lines[:index] + [before_closer]


def _suffix_closes_enclosing_bracket(around: _Surroundings) -> bool:
    """Does the text after the cursor close a bracket opened before it?"""
    depth = 0
    state: str | None = None
    for line in around.suffix.split("\n"):
        code, end_state = lex_line(line, around.language_id, state)
        for char in code:
            depth += (char in OPENERS) - (char in CLOSERS)
            if depth < 0:
                return True
        state = next_line_state(end_state)
    return False


# --- Text that is already there ------------------------------------------------------------------


def _drop_trailing_blank_lines(lines: list[str]) -> list[str]:
    while len(lines) > 1 and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _drop_doubled_space(lines: list[str], around: _Surroundings) -> list[str]:
    """After `x = |` a completion ` 1` would give `x =  1`; the space is only indentation when
    the cursor's line is blank."""
    line_before = around.line_before
    if not lines or not line_before.strip() or line_before[-1:] not in (" ", "\t"):
        return lines
    return [lines[0].lstrip(" \t"), *lines[1:]]


def _drop_repeated_suffix(lines: list[str], around: _Surroundings) -> list[str]:
    """Drop a completion that only repeats what follows the cursor, and cut a tail of lines that
    repeats the lines below the cursor (the model re-typing the `return` already there)."""
    rest = around.line_after.strip()
    if len(lines) == 1 and rest and lines[0].strip() and rest.startswith(lines[0].strip()):
        return []
    new_lines = _new_lines(lines, around)
    below = around.lines_below[: len(new_lines)]
    if new_lines and [line for _, line in new_lines] == below:
        return []
    for overlap in range(len(new_lines) - 1, 0, -1):
        tail = [line for _, line in new_lines[-overlap:]]
        # A lone `}` or `else:` repeats by chance; lines with names in them do not.
        if tail == below[:overlap] and any(char.isalnum() for line in tail for char in line):
            return lines[: new_lines[-overlap][0]]
    return lines


def _new_lines(lines: list[str], around: _Surroundings) -> list[tuple[int, str]]:
    """(index, whole line) of the non-blank lines the completion adds below the cursor line's
    text; the first line counts when it fills an otherwise blank line."""
    whole = [(index, line) for index, line in enumerate(lines) if index > 0 and line.strip()]
    first = around.line_before + lines[0] if lines else ""
    if first.strip() and lines[0].strip() and not around.line_after.strip():
        whole.insert(0, (0, first))
    return whole


_REPEATABLE_AFTER_CLOSER = ";:,"


def _drop_duplicate_closers(lines: list[str], around: _Surroundings) -> list[str]:
    """`foo(|)` completed with `a, b)`: the `)` is already there, so show `a, b`."""
    if not lines:
        return lines
    rest, first = around.line_after, lines[0]
    for length in range(len(rest), 0, -1):
        overlap = rest[:length]
        if (
            overlap[0] in CLOSERS + QUOTES
            and all(char in CLOSERS + QUOTES + _REPEATABLE_AFTER_CLOSER for char in overlap)
            and first.endswith(overlap)
        ):
            return [first[:-length].rstrip(), *lines[1:]]
    return lines


# --- Does it fit the code around it --------------------------------------------------------------


def _longest_prefix_that_parses(lines: list[str], around: _Surroundings) -> list[str]:
    """The most whole lines that insert without adding parse errors to the document.

    Compared with the document without the completion, because the user's code may already be
    broken while typing. Languages without a grammar keep every line.
    """
    document = parse(around.prefix + around.suffix, around.language_id)
    if document is None:
        return lines
    errors_before = error_count(document)
    for count in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:count])
        if not candidate.strip():
            break
        tree = parse_with_insertion(document, around.prefix, candidate, around.suffix, around.language_id)
        if tree is not None and error_count(tree) <= errors_before and not _ends_with_bare_header(candidate, around):
            return lines[:count]
    return []


def _ends_with_bare_header(candidate: str, around: _Surroundings) -> bool:
    # tree-sitter-python accepts a block header with no body at all (`if x:` and nothing after),
    # so the parse can't reject a completion cut right after one.
    if not uses_indentation_blocks(around.language_id):
        return False
    last_line = candidate.rstrip().rpartition("\n")[2]
    return code_without_strings(last_line, around.language_id).rstrip().endswith(":")


def _keep_line_after_apart(text: str, around: _Surroundings) -> str:
    """`if (x) {|}`: lines inserted before the `}` end with a line break at the cursor line's
    indentation, so the `}` gets a line of its own instead of trailing the last statement."""
    if "\n" not in text or not around.line_after.strip():
        return text
    return text + "\n" + leading_whitespace(around.line_before)
