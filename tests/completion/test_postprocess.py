"""postprocess on real code and the kind of text a FIM model writes; █ marks the cursor."""

from __future__ import annotations

import pytest

from fimble.completion.postprocess import postprocess
from fimble.completion.trigger import CompletionMode

NONE, SINGLE, MULTI = CompletionMode.NONE, CompletionMode.SINGLE_LINE, CompletionMode.MULTI_LINE
CURSOR = "█"


def shown(completion: str, source: str, mode: CompletionMode, language_id: str = "python") -> str:
    prefix, suffix = source.split(CURSOR)
    return postprocess(completion, prefix, suffix, mode, language_id)


def case(source: str, completion: str, expected: str, language_id: str = "python", *, name: str) -> object:
    return pytest.param(source, completion, expected, language_id, id=name)


# --- Single line ---------------------------------------------------------------------------------

SINGLE_LINE_CASES = [
    case("    subtotal = █\n", "sum(prices)\n    return subtotal\n", "sum(prices)", name="line end"),
    case("    subtotal = sum(prices)█\n", "\n    return subtotal", "", name="starts a new line"),
    case("def f():\n    x = █\n", "   \n\n  ", "", name="whitespace only"),
    case("x = █\n", "", "", name="empty"),
    case("    return █\n", "a + b   ", "a + b", name="trailing spaces"),
    case("answer = █\n", " 42", "42", name="space after the cursors space"),
    case("def double(x):\n█\n", "    return x * 2", "    return x * 2", name="indentation on a blank line kept"),
    case("    print(message█)\n", ")", "", name="only the closer already there"),
    case("    total = compute_total(█)\n", "prices, tax_rate)", "prices, tax_rate", name="paren already there"),
    case("    item = items[█]\n", "index + 1]", "index + 1", name="bracket already there"),
    case("lookup = {█}\n", "k: v for k, v in pairs}", "k: v for k, v in pairs", name="brace already there"),
    case('print("█")\n', 'Hello, world!")', "Hello, world!", name="quote and paren already there"),
    case("  await save(█);\n", "user.id, payload);", "user.id, payload", "typescript", name="closer and semicolon"),
    # Nothing follows the cursor: the model's `)` is the only one.
    case("    print(█\n", "len(items))", "len(items))", name="closer not after the cursor kept"),
    # `]` follows, but the completion ends in `)`: nothing to drop.
    case("    values = [█]\n", "f(x)", "f(x)", name="other closer after the cursor"),
    case("if user is not None█:\n    login(user)\n", ":", "", name="repeats the rest of the line"),
    case("    cost = price█ * quantity\n", " * quantity", "", name="repeats the rest of the line after a space"),
    case("def double(x):\n    █\n    return x * 2\n", "return x * 2", "", name="repeats the next line"),
    case(
        "def double(x):\n    █\n    return x * 2\n",
        "assert isinstance(x, int)",
        "assert isinstance(x, int)",
        name="differs from the next line",
    ),
    case("def fläche(länge, breite):\n    return (█)\n", "länge * breite)", "länge * breite", name="unicode"),
]


@pytest.mark.parametrize(("source", "completion", "expected", "language_id"), SINGLE_LINE_CASES)
def test_single_line(source: str, completion: str, expected: str, language_id: str) -> None:
    assert shown(completion, source, SINGLE, language_id) == expected


def test_mode_none_shows_nothing() -> None:
    assert shown("print(item)", "for item in items:\n    █\n", NONE) == ""


def test_whitespace_only_multi_line_shows_nothing() -> None:
    assert shown("\n\n    \n", "def f():\n    █\n", MULTI) == ""


# --- Multi line: where the block ends ----------------------------------------------------------------------


PYTHON_BLOCK_CASES = [
    case(
        "def add(a, b):\n█",
        "    return a + b\n\ndef other():\n    pass\n",
        "    return a + b",
        name="stops before the next function",
    ),
    case(
        "def report(items):█\n",
        "\n    for item in items:\n        if item.active:\n            print(item.name)\n"
        "    return len(items)\n\n\nprint('done')\n",
        "\n    for item in items:\n        if item.active:\n            print(item.name)\n    return len(items)",
        name="after a header keeps nested blocks",
    ),
    case(
        "class Account:\n    def __init__(self):\n        self.balance = 0\n\n"
        "    def deposit(self, amount: int) -> int:\n        █\n",
        "self.balance += amount\n        return self.balance\n\n"
        "    def withdraw(self, amount: int) -> int:\n        self.balance -= amount\n",
        "self.balance += amount\n        return self.balance",
        name="method stops at the next method",
    ),
    case(
        "class Rect:\n█",
        "    @property\n    def area(self) -> float:\n        return self.w * self.h\n\nclass Circle:\n",
        "    @property\n    def area(self) -> float:\n        return self.w * self.h",
        name="column 0 takes the first lines indentation",
    ),
    case(
        "import sys\n\n\n█",
        "def main() -> int:\n    print(sys.argv)\n    return 0\n\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
        "def main() -> int:\n    print(sys.argv)\n    return 0\n\n\nif __name__ == '__main__':\n    sys.exit(main())",
        name="top level keeps top-level statements",
    ),
    case(
        "def first(items):\n    █\n",
        "if not items:  \n        return None   \n    return items[0]\n\n\n   \n",
        "if not items:\n        return None\n    return items[0]",
        name="trailing blank lines and spaces dropped",
    ),
    case(
        "def fläche(länge, breite):\n█",
        "    return länge * breite\n\n\ndef umfang(länge, breite):\n    pass\n",
        "    return länge * breite",
        name="unicode identifiers",
    ),
    # The `)` after the cursor ends up on its own line at the statement's indentation.
    case(
        "total = compute_total(█)\n",
        "\n    prices,\n    tax_rate,\n)\nprint(total)\n",
        "\n    prices,\n    tax_rate,\n",
        name="hanging bracket stops before the closer already there",
    ),
    case(
        "def run(steps):█\n",
        '\n    """Run the steps.\n\nSteps:\n    1) validate\n    2) apply\n    """\n'
        "    for step in steps:\n        step()\n\n\ndef undo(steps):\n    pass\n",
        '\n    """Run the steps.\n\nSteps:\n    1) validate\n    2) apply\n    """\n'
        "    for step in steps:\n        step()",
        name="docstring lines are neither dedents nor brackets",
    ),
    case(
        "def fetch(session, url):\n    █\n",
        "response = session.get(\n  url, timeout=10)\n    return response.json()\n\nfetch(None, '')\n",
        "response = session.get(\n  url, timeout=10)\n    return response.json()",
        name="lines inside the models own brackets may be dedented",
    ),
    case(
        "def multiply(a, b):\n█",
        "    return a * b\n\n# --- Division ---\n\ndef divide(a, b):\n",
        "    return a * b",
        name="a comment at the outer level ends the block",
    ),
]


@pytest.mark.parametrize(("source", "completion", "expected", "language_id"), PYTHON_BLOCK_CASES)
def test_python_stops_where_the_block_ends(source: str, completion: str, expected: str, language_id: str) -> None:
    assert shown(completion, source, MULTI, language_id) == expected


def test_python_body_not_indented_under_its_header_is_not_shown() -> None:
    # `return` at column 0 would end the function before its body: the model lost the indentation.
    assert shown("return a + b\n", "def add(a, b):\n█", MULTI) == ""
    assert shown("\nreturn a + b\n\nprint(add(1, 2))", "def add(a, b):█", MULTI) == ""


# --- Multi line: braces ----------------------------------------------------------------------------------


BRACE_BLOCK_CASES = [
    # The `}` after the cursor goes on a line of its own, at the opener line's indentation.
    case(
        "const math = {\n  sum(a, b) {█}\n};\n",
        "\n    return a + b;\n  }\n\n  function other() {}",
        "\n    return a + b;\n  ",
        "javascript",
        name="js between braces",
    ),
    case(
        "function render(props) {\n  █\n}\n",
        "const { title, body } = props;\n  return `${title}: ${body}`;\n}\n\nexport default render;\n",
        "const { title, body } = props;\n  return `${title}: ${body}`;",
        "javascript",
        name="js blank line in braces",
    ),
    # Nothing after the cursor closes the block, so the model's `}` is needed.
    case(
        "function userId(user) {█",
        "\n  if (!user) {\n    throw new Error('no user');\n  }\n  return user.id;\n}\n\nmain();\n",
        "\n  if (!user) {\n    throw new Error('no user');\n  }\n  return user.id;\n}",
        "javascript",
        name="js unclosed block keeps the models brace",
    ),
    case(
        "items.forEach((item) => {\n  █\n});\n",
        "console.log(item.name);\n});\n\nconsole.log('done');\n",
        "console.log(item.name);",
        "javascript",
        name="js callback",
    ),
    case(
        "function finish() {\n  █\n}\n",
        'console.log("} done {");\n  return `}`;\n}\n',
        'console.log("} done {");\n  return `}`;',
        "javascript",
        name="braces inside strings",
    ),
    case(
        "function lookup(cache, key) {\n  █\n}\n",
        "/*\n   } is not the end\n  */\n  return cache.get(key);\n}\n",
        "/*\n   } is not the end\n  */\n  return cache.get(key);",
        "javascript",
        name="braces inside a block comment",
    ),
    case(
        "export class Cache<V> {\n  private items = new Map<string, V>();\n\n"
        "  get(key: string): V | undefined {\n    █\n  }\n}\n",
        "return this.items.get(key);\n  }\n\n  set(key: string, value: V): void {\n",
        "return this.items.get(key);",
        "typescript",
        name="ts method in a class body",
    ),
    case(
        'package main\n\nimport "fmt"\n\nfunc main() {\n\t█\n}\n',
        'name := "world"\n\tfmt.Println("hello", name)\n}\n\nfunc other() {\n}\n',
        'name := "world"\n\tfmt.Println("hello", name)',
        "go",
        name="go body with tabs",
    ),
    case(
        "fn longest<'a>(a: &'a str, b: &'a str) -> &'a str {\n    █\n}\n",
        "if a.len() >= b.len() {\n        a\n    } else {\n        b\n    }\n}\n\nfn main() {}\n",
        "if a.len() >= b.len() {\n        a\n    } else {\n        b\n    }",
        "rust",
        name="rust body with lifetimes",
    ),
    case(
        "int main(void) {\n    █\n}\n",
        'printf("hello {\\n");\n    return 0;\n}\n\nint other(void) {\n',
        'printf("hello {\\n");\n    return 0;',
        "c",
        name="c without a grammar",
    ),
]


@pytest.mark.parametrize(("source", "completion", "expected", "language_id"), BRACE_BLOCK_CASES)
def test_brace_languages_stop_at_the_brace_that_closes_the_block(
    source: str, completion: str, expected: str, language_id: str
) -> None:
    assert shown(completion, source, MULTI, language_id) == expected


# --- Multi line: repeats of the suffix -----------------------------------------------------------------------


def test_multi_line_tail_that_repeats_the_lines_below_is_cut() -> None:
    source = "def normalize(values):\n    █\n    return [v / total for v in values]\n"
    completion = "total = sum(values)\n    return [v / total for v in values]\n"
    assert shown(completion, source, MULTI) == "total = sum(values)"


def test_multi_line_that_only_repeats_the_lines_below_is_dropped() -> None:
    source = "def normalize(values):\n    █\n    total = sum(values)\n    return [v / total for v in values]\n"
    completion = "total = sum(values)\n    return [v / total for v in values]"
    assert shown(completion, source, MULTI) == ""


def test_a_lone_brace_that_matches_the_line_below_by_chance_is_kept() -> None:
    source = "function check(user) {\n  █\n}\n"
    completion = "if (!user) {\n    throw new Error('missing');\n  }\n"
    # `  }` closes the model's own `if`; the `}` below closes the function.
    assert shown(completion, source, MULTI, "javascript") == "if (!user) {\n    throw new Error('missing');\n  }"


# --- Multi line: the result must parse with the code around it -----------------------------------------------


def test_multi_line_cut_to_the_lines_that_parse() -> None:
    source = "def area(width, height):\n█"
    completion = "    result = width * height\n    return (result,\n"
    assert shown(completion, source, MULTI) == "    result = width * height"


def test_multi_line_that_parses_in_no_prefix_is_dropped() -> None:
    source = "function area(w, h) {\n  █\n}\n"
    assert shown("return (w * h;\n  const x = [;", source, MULTI, "javascript") == ""


def test_multi_line_does_not_end_on_a_header_without_its_body() -> None:
    source = "def first_positive(values):\n█"
    completion = "    for value in values:\n        if value > 0 and (\n"
    assert shown(completion, source, MULTI) == ""


def test_existing_errors_elsewhere_do_not_block_a_good_completion() -> None:
    # The user is halfway through another function: that error is not the completion's fault.
    source = "def broken(:\n    pass\n\n\ndef add(a, b):\n    █\n"
    assert shown("return a + b", source, MULTI) == "return a + b"


def test_multi_line_completion_that_closes_an_earlier_bracket_parses() -> None:
    source = "const handler = async (event) => {█"
    completion = "\n  const body = JSON.parse(event.body);\n  return { statusCode: 200, body };\n};\n"
    assert shown(completion, source, MULTI, "javascript") == (
        "\n  const body = JSON.parse(event.body);\n  return { statusCode: 200, body };\n};"
    )


def test_multi_line_stops_where_the_code_below_resumes() -> None:
    prefix = "def separate(groups):\n    result = []\n"
    suffix = "\n    for group in groups:\n        result.append(group)\n    return result\n"
    completion = "    seen = set()\n    for group in groups:\n        if group not in seen:\n            result.append(group)\n"
    assert postprocess(completion, prefix, suffix, CompletionMode.MULTI_LINE, "python") == "    seen = set()"


# --- The indentation typed at the cursor ---------------------------------------------------------

TYPED_INDENTATION_CASES = [
    case("def area(r):\n    █\n", "    return 3.14159 * r * r", "return 3.14159 * r * r", name="four spaces deeper"),
    case("def area(r):\n    █\n", "        return 3.14159 * r * r", "return 3.14159 * r * r", name="eight spaces deeper"),
    case("def area(r):\n    █\n", "return 3.14159 * r * r", "return 3.14159 * r * r", name="already at the cursor"),
    case("def area(r):\n    ret█\n", "    urn r", "    urn r", name="after code, spaces are the model's"),
    case("█\n", "    x = 1", "    x = 1", name="column 0: nothing was typed"),
    case("func f() {\n\t█\n}\n", "\treturn 1", "return 1", "go", name="a tab deeper"),
]


@pytest.mark.parametrize(("source", "completion", "expected", "language_id"), TYPED_INDENTATION_CASES)
def test_a_completion_adds_nothing_to_the_indentation_typed_at_the_cursor(source: str, completion: str, expected: str, language_id: str) -> None:
    assert shown(completion, source, SINGLE, language_id) == expected


def test_a_block_written_one_level_too_deep_keeps_its_shape_at_the_cursor() -> None:
    source = "def total(items):\n    █\n"
    completion = "    result = 0\n        for item in items:\n            result += item.price\n        return result"
    assert shown(completion, source, MULTI) == "result = 0\n    for item in items:\n        result += item.price\n    return result"


def test_only_the_first_line_too_deep_leaves_the_lines_after_it_alone() -> None:
    source = "def total(items):\n    █\n"
    completion = "    result = 0\n    for item in items:\n        result += item.price"
    assert shown(completion, source, MULTI) == "result = 0\n    for item in items:\n        result += item.price"


def test_every_indented_line_of_a_real_module_comes_back_at_the_typed_indentation() -> None:
    """Each indented line of pathspec's pattern.py, emptied after its indentation, with the model's
    answer four spaces too deep, plainly and through line-start healing: what is shown is the
    line's code, which puts the line back as it was."""
    import importlib.util
    from pathlib import Path

    from fimble.models.stopping import strip_healed

    text = (Path(importlib.util.find_spec("pathspec").origin).parent / "pattern.py").read_text()
    lines = text.split("\n")
    checked = 0
    for number, line in enumerate(lines):
        code = line.lstrip(" \t")
        indentation = line[: len(line) - len(code)]
        if not indentation or not code:
            continue
        prefix = "\n".join(lines[:number] + [indentation])
        suffix = "\n" + "\n".join(lines[number + 1 :])
        assert postprocess("    " + code, prefix, suffix, SINGLE, "python") == code.rstrip(), line
        healed = "\n" + indentation
        assert postprocess(strip_healed(healed + "    " + code + "\n", healed), prefix, suffix, SINGLE, "python") == code.rstrip(), line
        checked += 1
    assert checked > 100
