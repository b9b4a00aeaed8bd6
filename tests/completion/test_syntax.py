"""Grammar loading, parsing and the line lexer the heuristics use."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fimble.completion.syntax import (
    indentation_after_enter,
    code_without_strings,
    ends_in_comment,
    error_count,
    indent_width,
    is_identifier_char,
    language_for,
    lex_line,
    next_line_state,
    open_quote,
    parse,
    parse_with_insertion,
    uses_indentation_blocks,
)
from fimble.context import languages

SHIPPED = ["python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust"]

VALID_SOURCE = {
    "python": "def add(a: int, b: int) -> int:\n    return a + b\n",
    "javascript": "export function add(a, b) {\n  return a + b;\n}\n",
    "javascriptreact": "const Button = ({ label }) => <button>{label}</button>;\n",
    "typescript": "export function add(a: number, b: number): number {\n  return a + b;\n}\n",
    "typescriptreact": "const Button = ({ label }: { label: string }) => <button>{label}</button>;\n",
    "go": 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hi")\n}\n',
    "rust": "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
}


@pytest.mark.parametrize("language_id", SHIPPED)
def test_every_shipped_grammar_parses_real_code_without_errors(language_id: str) -> None:
    tree = parse(VALID_SOURCE[language_id], language_id)
    assert tree is not None
    assert error_count(tree) == 0
    assert tree.root_node.end_byte == len(VALID_SOURCE[language_id].encode("utf-8"))


def test_grammars_are_loaded_once_per_language() -> None:
    assert language_for("python") is language_for("python")
    # JSX files use the JavaScript grammar itself, not a second copy of it.
    assert language_for("javascriptreact") is language_for("javascript")


def test_typescriptreact_gets_the_tsx_grammar_and_typescript_does_not() -> None:
    jsx = "const title = <h1>Hello</h1>;\n"
    tsx_tree, ts_tree = parse(jsx, "typescriptreact"), parse(jsx, "typescript")
    assert tsx_tree is not None and ts_tree is not None
    assert error_count(tsx_tree) == 0
    assert error_count(ts_tree) > 0


@pytest.mark.parametrize("language_id", ["plaintext", "cobol", "c", ""])
def test_languages_without_a_grammar_get_none(language_id: str) -> None:
    assert language_for(language_id) is None
    assert parse("int main(void) { return 0; }", language_id) is None


def test_error_count_counts_error_nodes() -> None:
    tree = parse("def broken(:\n    return 1\n", "python")
    assert tree is not None
    assert error_count(tree) >= 1


def test_error_count_counts_missing_nodes() -> None:
    # The parser recovers from a brace left open by inserting a zero-width MISSING "}".
    tree = parse("function f() {\n  return 1;\n", "javascript")
    assert tree is not None
    assert "MISSING" in str(tree.root_node)
    assert error_count(tree) == 1


def test_error_count_grows_with_each_broken_statement() -> None:
    one = parse("x = (1,\ny = 2\n", "python")
    two = parse("x = (1,\ny = 2\nz = [3,\nw = 4\n", "python")
    assert one is not None and two is not None
    assert error_count(two) > error_count(one) > 0


def test_parse_with_insertion_equals_a_fresh_parse_after_unicode_text() -> None:
    before = 'def grüße(name: str) -> str:\n    """Grüß Gott."""\n    '
    inserted = 'return f"Grüß dich, {name}"'
    after = "\n\n\ndef später():\n    pass\n"
    document = parse(before + after, "python")
    assert document is not None
    reparsed = parse_with_insertion(document, before, inserted, after, "python")
    fresh = parse(before + inserted + after, "python")
    assert reparsed is not None and fresh is not None
    assert str(reparsed.root_node) == str(fresh.root_node)
    assert reparsed.root_node.end_byte == len((before + inserted + after).encode("utf-8"))
    # The edit is applied to a copy: the document's tree still describes the text without it.
    assert document.root_node.end_byte == len((before + after).encode("utf-8"))


def every_node(tree) -> list[tuple]:
    nodes, cursor = [], tree.walk()
    while True:
        node = cursor.node
        nodes.append((node.type, node.start_byte, node.end_byte, node.start_point, node.end_point, node.is_missing))
        if cursor.goto_first_child() or cursor.goto_next_sibling():
            continue
        while cursor.goto_parent():
            if cursor.goto_next_sibling():
                break
        else:
            return nodes


# A real file's first 200 lines: classes, strings, comments, decorators.
REAL_PYTHON = "".join(Path(argparse.__file__).read_text().splitlines(keepends=True)[:200])
PIECES = ["", "x", "(", ")", '"', "\n    ", "# ", "ü", "def f():\n", '"""']
EDITS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 12), st.sampled_from(PIECES)), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(EDITS)
def test_each_keystrokes_incremental_parse_equals_a_fresh_parse(edits) -> None:
    """parse() reparses from the last tree it made; after any edit, deletion or insertion,
    unbalanced brackets and quotes included, the tree is node for node the fresh parse's."""
    text = REAL_PYTHON
    parse(text, "python")
    for where, deleted, inserted in edits:
        at = int(where * len(text))
        text = text[:at] + inserted + text[at + deleted :]
        assert every_node(parse(text, "python")) == every_node(languages.parse(text, "python"))


def test_code_without_strings_blanks_strings_and_comments_keeping_columns() -> None:
    line = 'print("it\'s # not a comment", x)  # a real one'
    code = code_without_strings(line, "python")
    assert len(code) == len(line)
    assert code.rstrip() == "print(" + " " * len('"it\'s # not a comment"') + ", x)"


def test_code_without_strings_uses_the_languages_comment_markers() -> None:
    code = code_without_strings("const url = 'http://x'; /* {{ */ go(); // note", "javascript").rstrip()
    assert code == "const url = " + " " * len("'http://x'") + "; " + " " * len("/* {{ */") + " go();"
    assert code_without_strings("x = a // b  # floor", "python").rstrip() == "x = a // b"


def test_lex_line_carries_python_triple_quoted_strings_across_lines() -> None:
    first, state = lex_line('    """Apply the steps (in order:', "python")
    assert first.strip() == "" and state == '"""'
    middle, state = lex_line("    1) validate, 2) apply", "python", next_line_state(state))
    assert middle.strip() == "" and state == '"""'
    last, state = lex_line('    """; run(steps)', "python", next_line_state(state))
    assert last.strip() == "; run(steps)" and state is None


def test_lex_line_carries_block_comments_and_template_strings() -> None:
    _, state = lex_line("  /* closes } later", "javascript")
    assert next_line_state(state) == "/*"
    code, state = lex_line("  still } here */ return 1; }", "javascript", "/*")
    assert code.strip() == "return 1; }" and state is None
    _, state = lex_line("const html = `<ul>", "javascript")
    assert next_line_state(state) == "`"


def test_line_comments_and_one_line_strings_end_with_their_line() -> None:
    assert next_line_state(lex_line("x = 1  # note", "python")[1]) is None
    assert next_line_state(lex_line('x = "unterminated', "python")[1]) is None


def test_ends_in_comment() -> None:
    assert ends_in_comment("total = 0  # running ", "python")
    assert ends_in_comment("let total = 0; // running ", "typescript")
    assert ends_in_comment("-- select the ", "sql")
    assert not ends_in_comment('url = "http://example.com"', "javascript")
    assert not ends_in_comment("x = 1 /* ok */ + ", "c")


def test_open_quote_finds_a_string_still_being_typed() -> None:
    assert open_quote('print("Hello, wor', "python") == '"'
    assert open_quote("msg = `total: ${n}", "javascript") == "`"
    assert open_quote('print("done")', "python") is None
    assert open_quote(r'path = "C:\\temp\\"', "python") is None  # escaped backslashes, closed string
    assert open_quote(r'say("a \" quote', "javascript") == '"'  # escaped quote, string still open


def test_rust_lifetimes_are_not_character_literals() -> None:
    assert open_quote("fn first<'a>(s: &'a str) -> &'a str {", "rust") is None
    assert open_quote("let c = 'x'; let s = \"abc", "rust") == '"'
    assert open_quote("let c = '\"'; let d = 'y';", "rust") is None


def test_indent_width_counts_tabs_to_the_next_stop_of_eight() -> None:
    assert indent_width("    return x") == 4
    assert indent_width("\treturn x") == 8
    assert indent_width("  \tx") == 8
    assert indent_width("") == 0


def test_identifier_characters_include_unicode_letters() -> None:
    assert all(is_identifier_char(char) for char in "aZ9_$éß変")
    assert not any(is_identifier_char(char) for char in " ().:\"'")
    assert not is_identifier_char("")


def test_only_python_blocks_are_indentation_delimited() -> None:
    assert uses_indentation_blocks("python")
    assert not uses_indentation_blocks("typescript")
    assert not uses_indentation_blocks("c")


def test_enter_keeps_the_indentation_and_opens_a_level_after_a_block_opener():
    assert indentation_after_enter("    return x", "python") == "    "
    assert indentation_after_enter("    if x:", "python") == "        "
    assert indentation_after_enter("\tfoo(", "go") == "\t\t"
    assert indentation_after_enter("func f() {", "go") == "    "
