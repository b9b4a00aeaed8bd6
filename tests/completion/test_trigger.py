"""decide_mode on real code; █ marks the cursor."""

from __future__ import annotations

import pytest

from fimble.completion.trigger import CompletionMode, decide_mode

NONE, SINGLE, MULTI = CompletionMode.NONE, CompletionMode.SINGLE_LINE, CompletionMode.MULTI_LINE
CURSOR = "█"


def mode_at(source: str, language_id: str = "python", explicit: bool = False) -> CompletionMode:
    prefix, suffix = source.split(CURSOR)
    return decide_mode(prefix, suffix, language_id, explicit)


def case(source: str, language_id: str = "python", *, name: str) -> object:
    return pytest.param(source, language_id, id=name)


def test_modes_are_strings_for_the_wire() -> None:
    assert [mode.value for mode in CompletionMode] == ["none", "single_line", "multi_line"]
    assert CompletionMode("multi_line") is MULTI


ACCOUNT = '''\
class Account:
    """A bank account."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    def deposit(self, amount: int) -> int:█
'''

# --- Multi-line: after a block opener, or in a body that has no statements yet -------------------

MULTI_LINE_CASES = [
    case(ACCOUNT, name="end of a def header"),
    case("import math\n\n\ndef add(a, b):\n█", name="column 0 under a header with no body"),
    case("def run(self, amount):\n    if amount <= 0:█", name="if header"),
    case("def run(self):\n    for entry in self.ledger:█", name="for header"),
    case("def run(self):\n    while retries > 0:█", name="while header"),
    case("def run(self):\n    with open(path, encoding='utf-8') as handle:█", name="with header"),
    case("def run(self):\n    try:█", name="try header"),
    case("class Client:\n    async def fetch(self, url: str) -> bytes:█", name="async def header"),
    case("def run(command):\n    match command.split():█", name="match header"),
    case("class Config(BaseModel, frozen=True):█", name="class header with keywords"),
    case('if x == "a:":█', name="header with a colon in a string"),
    case(
        "def transfer(\n    source: Account,\n    target: Account,\n    amount: int,\n) -> None:█\n",
        name="header spread over lines",
    ),
    case(
        "class Circle:\n    @property\n    def area(self) -> float:█\n\n    def name(self):\n        return 'c'\n",
        name="decorated method header",
    ),
    case(
        "class Shape:\n    def area(self) -> float:\n        █\n\n    def name(self) -> str:\n        return 's'\n",
        name="indented blank line in a new body",
    ),
    case(
        'def parse_config(path: str) -> dict:\n    """Read the TOML file."""\n    █\n\n\ndef main():\n    pass\n',
        name="body with only a docstring",
    ),
    case(
        "def retry(times: int):\n"
        '    """Call the function again on failure.\n\n    Gives up after `times` attempts.\n    """\n'
        "    # TODO: backoff\n"
        "    █\n",
        name="body with only a multi-line docstring and a comment",
    ),
    case("def größe(länge: float) -> float:\n    █\n", name="unicode identifiers"),
    case("export function sum(a, b) {█}\n", "javascript", name="js between braces"),
    case("items.forEach((item) => {█\n", "javascript", name="js open brace at end of line"),
    case("items.forEach((item) => {█});\n", "javascript", name="js brace before its closers"),
    case("const defaults = {█};\n", "javascript", name="js object literal"),
    case("function render(props) {\n  █\n}\n", "javascript", name="js blank line in an empty function"),
    # Without auto-closing the parser folds the next function into this block; indentation says no.
    case(
        "function first() {\n  █\n\nfunction second() {\n  return 2;\n}\n",
        "javascript",
        name="js unclosed brace before more functions",
    ),
    case(
        "export class LruCache<K, V> {\n  // entries in use order\n  █\n}\n",
        "typescript",
        name="ts class body with only a comment",
    ),
    case('package main\n\nimport "fmt"\n\nfunc main() {\n\t█\n}\n', "go", name="go empty body with tabs"),
    case("fn first<'a>(s: &'a str) -> &'a str {█}\n", "rust", name="rust header with lifetimes"),
    case("int main(void) {\n    █\n}\n", "c", name="c without a grammar, empty body"),
    case("int main(void) {█}\n", "c", name="c without a grammar, between braces"),
    case("def load(path):█\r\n\r\ndef save(path):\r\n    pass\r\n", name="CRLF document"),
    case("def load(path):\r\n    █\r\n\r\ndef save(path):\r\n    pass\r\n", name="CRLF empty body"),
]


@pytest.mark.parametrize(("source", "language_id"), MULTI_LINE_CASES)
def test_block_openers_and_empty_bodies_ask_for_lines(source: str, language_id: str) -> None:
    assert mode_at(source, language_id) is MULTI


# --- Single line: code on the line, strings, between statements ---------------------------------

SINGLE_LINE_CASES = [
    case('config = {"name":█', name="dict key colon"),
    case("items.sort(key=lambda item:█", name="lambda colon"),
    case("head = values[1:█", name="slice colon"),
    case("    amount: int█", name="annotation"),
    case("def mean(values):\n    █\n    return sum(values) / len(values)\n", name="blank line above a body"),
    case(
        "class Stack:\n    def push(self, item):\n        self.items.append(item)\n        █\n",
        name="blank line after the last statement of a method",
    ),
    case("█", name="empty document"),
    case("def total(prices):\n    subtotal = sum(pri█\n", name="mid identifier at line end"),
    case("    result = compute(█)\n", name="code before the cursor"),
    case("if user is not None█:\n    pass\n", name="before punctuation"),
    case("def größe(länge: float) -> float:\n    ergebnis = län█\n", name="unicode identifier being typed"),
    case('color = "#ff0000"█\n', name="hash inside a string is no comment"),
    case('greeting = "Hello, █"\n', name="string literal"),
    case('label = "Total:█"\n', name="string ending in a colon"),
    # No closing quote yet: the grammar sees an error, the line's quotes still tell.
    case('    raise ValueError("amount must be positive, got {█\n\ndef f():\n    pass\n', name="string being typed"),
    case('def load(path):\n    """Load the file.\n\n    Returns the █\n    """\n', name="docstring line"),
    case('message = f"{user.name}: {len(ite█)}"\n', name="f-string interpolation"),
    case("const cache = /* by id */ █\n", "typescript", name="ts after a closed block comment"),
    case("const msg = `Hello ${name}, you have █`;\n", "typescript", name="ts template literal"),
    case(
        'export const Card = () => (\n  <div className="card █">\n    <h2>Title</h2>\n  </div>\n);\n',
        "typescriptreact",
        name="tsx attribute string",
    ),
    case("fn main() {\n    let total = 1;\n    █\n}\n", "rust", name="rust blank line after a statement"),
    case("int main(void) {\n    int x = 1;\n    █\n}\n", "c", name="c without a grammar, non-empty body"),
    case('    printf("total: {█\n', "c", name="c without a grammar, string being typed"),
]


@pytest.mark.parametrize(("source", "language_id"), SINGLE_LINE_CASES)
def test_code_strings_and_full_blocks_finish_one_line(source: str, language_id: str) -> None:
    assert mode_at(source, language_id) is SINGLE


# --- Nothing: comments and the middle of a word --------------------------------------------------

NONE_CASES = [
    case("timeout = 30  # seconds, see █\n", name="end of a trailing comment"),
    case("def f():\n    █return 1\n", name="before a word on a blank indent"),
    case("変数 = 計█算()\n", name="inside a unicode word"),
    case("const limit = 10; // max █\n", "typescript", name="ts line comment"),
    case("/* Cache of █ */\nconst cache = new Map();\n", "typescript", name="ts block comment"),
    case("/// Returns the █\nfn total() -> u32 { 0 }\n", "rust", name="rust doc comment"),
    case("    x = 1; // keep █\n", "c", name="c without a grammar, line comment"),
    case("/* Allocates a buffer of █\n", "c", name="c without a grammar, open block comment"),
    case("# install the █\n", "shellscript", name="shell script without a grammar, hash comment"),
]


@pytest.mark.parametrize(("source", "language_id"), NONE_CASES)
def test_comments_and_words_ask_for_nothing(source: str, language_id: str) -> None:
    assert mode_at(source, language_id) is NONE


# --- What an explicit invoke changes ---------------------------------------------------------------


def test_blank_line_in_a_non_empty_block_is_single_line_and_explicit_widens() -> None:
    source = "def mean(values):\n    total = sum(values)\n    █\n    return total / len(values)\n"
    assert mode_at(source) is SINGLE
    assert mode_at(source, explicit=True) is MULTI


def test_js_blank_line_in_a_non_empty_function_is_single_line_and_explicit_widens() -> None:
    source = "function render(props) {\n  const { title } = props;\n  █\n}\n"
    assert mode_at(source, "javascript") is SINGLE
    assert mode_at(source, "javascript", explicit=True) is MULTI


def test_end_of_file_after_complete_code_is_single_line_and_explicit_widens() -> None:
    source = "def add(a, b):\n    return a + b\n\n\n█"
    assert mode_at(source) is SINGLE
    assert mode_at(source, explicit=True) is MULTI


def test_explicit_invoke_after_code_stays_single_line() -> None:
    assert mode_at("    result = compute(█)\n", explicit=True) is SINGLE


def test_explicit_invoke_in_a_comment_finishes_its_line() -> None:
    source = "def area(r):\n    # Compute the area of a █\n    return math.pi * r * r\n"
    assert mode_at(source) is NONE
    assert mode_at(source, explicit=True) is SINGLE


def test_explicit_invoke_inside_a_word_finishes_the_line() -> None:
    source = "for item in items:\n    pri█nt(item)\n"
    assert mode_at(source) is NONE
    assert mode_at(source, explicit=True) is SINGLE
