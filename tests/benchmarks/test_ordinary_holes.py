"""The ordinary-holes benchmark's parts: which lines are holes, which tests cover them, which holes
qualify, and how an answer is put back and counted. The library here is a tiny one made for the
test, and its tests run for real, as the benchmark runs a library's."""

from __future__ import annotations

import json
import textwrap

from benchmarks.humaneval_infill import Answer
from benchmarks.lsp_text import Position
from benchmarks.ordinary_holes import Checker, Hole, Library, completed_line, covering_tests, known_verdicts, qualifies, summary, whole_logical_lines

SOURCE = textwrap.dedent(
    '''\
    """A module docstring."""


    def double(x):
        # a comment
        doubled = x * 2
        unused = 1
        return (
            doubled
        )


    def shout(text):
        if text:
            return text.upper() + "!"
        return ""
    '''
)
TESTS = textwrap.dedent(
    """\
    from tinylib.mod import double, shout


    def test_double():
        assert double(2) == 4


    def test_shout():
        assert shout("hi") == "HI!"
    """
)
LIBRARY = Library("tinylib", "1.0", "0" * 64, "tinylib", "tests")


def make_library(root):
    (root / "tinylib").mkdir(parents=True)
    (root / "tinylib" / "__init__.py").write_text("")
    (root / "tinylib" / "mod.py").write_text(SOURCE)
    (root / "tests").mkdir()
    (root / "tests" / "test_mod.py").write_text(TESTS)
    return root


def hole_at(number: int, tests: tuple[str, ...]) -> Hole:
    line = SOURCE.split("\n")[number - 1]
    code = line.lstrip()
    return Hole(LIBRARY.label, "tinylib/mod.py", number - 1, line[: len(line) - len(code)], code, tests)


def test_a_hole_is_a_whole_logical_line_of_code():
    # Not the docstring, the comment, blank lines, nor the lines of the statement that spans three.
    assert whole_logical_lines(SOURCE) == {4, 6, 7, 13, 14, 15, 16}


def test_the_suite_under_coverage_says_which_tests_run_each_line(tmp_path):
    tree = make_library(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    covered = covering_tests(LIBRARY, tree, work)["tinylib/mod.py"]
    assert covered[6] == ["tests/test_mod.py::test_double"]
    assert covered[15] == ["tests/test_mod.py::test_shout"]
    assert 16 not in covered  # no test has an empty text
    assert 4 not in covered  # `def` runs at import, in no test
    # Kept beside the work, and read from there the next time.
    (tree / "tests" / "test_mod.py").unlink()
    assert covering_tests(LIBRARY, tree, work)["tinylib/mod.py"] == covered


def test_a_hole_qualifies_when_its_tests_pass_with_the_line_and_fail_without_it(tmp_path):
    tree = make_library(tmp_path / "src")
    checker = Checker({LIBRARY.label: tree}, tmp_path)
    verdicts = tmp_path / "verdicts.jsonl"
    needed = hole_at(6, ("tests/test_mod.py::test_double",))
    not_needed = hole_at(7, ("tests/test_mod.py::test_double",))
    assert qualifies(checker, needed, verdicts, {})
    assert not qualifies(checker, not_needed, verdicts, {})
    # The checks ran on a copy: the tree the servers index never changed.
    assert (tree / "tinylib" / "mod.py").read_text() == SOURCE
    assert [json.loads(line)["key"] for line in verdicts.read_text().splitlines()] == [needed.key, not_needed.key]
    # A verdict is remembered: with the copy's tests gone, the hole still qualifies.
    (checker.copies[LIBRARY.label] / "tests" / "test_mod.py").unlink()
    assert qualifies(checker, needed, verdicts, known_verdicts(verdicts))


def test_a_check_runs_the_line_given_and_puts_the_file_back(tmp_path):
    checker = Checker({LIBRARY.label: make_library(tmp_path / "src")}, tmp_path)
    hole = hole_at(15, ("tests/test_mod.py::test_shout",))
    assert checker.run(hole, hole.indent + 'return text.upper() + "!"').passed
    assert not checker.run(hole, hole.indent + "return text.upper()").passed
    assert (checker.copies[LIBRARY.label] / "tinylib" / "mod.py").read_text() == SOURCE


def test_the_answers_first_line_is_put_back_at_the_cursor_or_over_its_range():
    hole = hole_at(6, ())
    document = SOURCE.replace("    doubled = x * 2\n", "    \n")
    at_cursor = Answer("doubled = x * 2\n    unused = 1", None, None, None, 0.1)
    assert completed_line(hole, document, at_cursor) == "    doubled = x * 2"
    # Line-start healing: the item replaces the line from its start, indentation included.
    over_the_line = Answer("    doubled = x + x", Position(5, 0), Position(5, 4), None, 0.1)
    assert completed_line(hole, document, over_the_line) == "    doubled = x + x"
    assert completed_line(hole, document, Answer("", None, None, None, 0.1)) == "    "


def test_holes_gained_and_lost_are_counted_pair_by_pair():
    def record(with_context: bool, without_context: bool) -> dict:
        side = {"exact": False, "edit_similarity": 0.5, "indentation_changed": False, "error": None}
        return {"with": {**side, "passed": with_context}, "without": {**side, "passed": without_context}}

    result = summary([record(True, False), record(False, True), record(False, True), record(True, True)])
    assert (result["gained"], result["lost"]) == (1, 2)
    assert (result["pass_with_context"], result["pass_without_context"]) == (0.5, 0.75)
