"""HumanEval through the chat path: each of the 164 problems is asked as a chat question, the code
block is taken from the answer and run against the problem's tests.

    python benchmarks/chat_humaneval.py    # writes benchmarks/results/chat_humaneval.{json,_tasks.jsonl}

The path is the product's: `chat.service.ChatService.ask` (Fimble's system prompt, the model's own
chat template, a new session per problem) with the in-process engine, as the daemon runs it, on the
embedded model, greedy. The program run is the problem's prompt (its imports and signature), then
the answer's code block, which redefines the function, then the tests, in the sandboxed subprocess
the infilling benchmark uses.

The Qwen2.5-Coder technical report gives 61.6% HumanEval pass@1 for Qwen2.5-Coder-0.5B-Instruct;
this path should lose at most 3 points of it to prompt or extraction mistakes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.humaneval_tasks import Problem, check_program, load_problems  # noqa: E402
from benchmarks.sandbox import SandboxLimits, run_python  # noqa: E402
from chat.service import ChatRequest, ChatService  # noqa: E402
from chat.session import SessionStore  # noqa: E402
from completion.backends import EngineBackend  # noqa: E402
from models.config import load_role_config  # noqa: E402
from models.pool import EnginePool  # noqa: E402
from models.spec import Role  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPORTED_PASS_AT_1 = 0.616  # Qwen2.5-Coder technical report (arXiv 2409.12186), 0.5B-Instruct, HumanEval
QUESTION = "Complete the following Python function. Reply with the whole function in one Python code block.\n\n```python\n{prompt}```"
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Record:
    task_id: str
    passed: bool
    code: str
    answer: str
    finish_reason: str
    seconds: float
    error: str


def code_from_answer(answer: str, entry_point: str) -> str:
    """The answer's code block that defines the function (else its first Python block, else the
    first block); an answer without fences is taken whole. An unclosed last fence (the answer ran
    out of tokens) counts up to the end."""
    blocks = [(language.lower(), body) for language, body in _FENCE.findall(answer)]
    if not blocks:
        return answer
    for language, body in blocks:
        if re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", body, re.MULTILINE):
            return body
    python = [body for language, body in blocks if language in ("python", "py", "python3")]
    return (python or [blocks[0][1]])[0]


def program_for(problem: Problem, code: str) -> str:
    # The prompt first: its imports and helper functions stay available when the answer drops them.
    return check_program(problem, f"{problem.prompt}\n    pass\n\n{code}")


async def solve(service: ChatService, problem: Problem, max_tokens: int, limits: SandboxLimits) -> Record:
    started = time.perf_counter()
    answer = await service.ask(ChatRequest(QUESTION.format(prompt=problem.prompt), max_answer_tokens=max_tokens))
    seconds = time.perf_counter() - started
    code = code_from_answer(answer.text, problem.entry_point)
    result = await asyncio.to_thread(run_python, program_for(problem, code), limits)
    return Record(problem.task_id, result.passed, code, answer.text, answer.finish_reason, seconds, "" if result.passed else result.stderr_tail[-300:])


async def run(service: ChatService, problems: list[Problem], max_tokens: int, limits: SandboxLimits) -> list[Record]:
    records = []
    for problem in problems:
        records.append(await solve(service, problem, max_tokens, limits))
        if len(records) % 10 == 0 or len(records) == len(problems):
            passed = sum(record.passed for record in records)
            print(f"{len(records)}/{len(problems)}: pass@1 {passed / len(records):.1%}", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems (quick runs)")
    parser.add_argument("--max-tokens", type=int, default=512, help="answer length cap")
    parser.add_argument("--out", type=Path, default=RESULTS / "chat_humaneval.json")
    args = parser.parse_args(argv)

    problems = load_problems()[: args.limit]
    pool = EnginePool(load_role_config())
    try:
        with tempfile.TemporaryDirectory() as data:
            service = ChatService(SessionStore(Path(data)), EngineBackend(pool))
            records = asyncio.run(run(service, problems, args.max_tokens, SandboxLimits()))
        loaded = pool.engine_for(Role.CHAT).loaded
    finally:
        pool.close()

    pass_at_1 = sum(record.passed for record in records) / len(records)
    result = {
        "pass_at_1": pass_at_1,
        "n": len(records),
        "reported_pass_at_1": REPORTED_PASS_AT_1,
        "points_below_reported": 100 * (REPORTED_PASS_AT_1 - pass_at_1),
        "answers_cut_by_length": sum(record.finish_reason == "length" for record in records),
        "p50_answer_s": statistics.median(record.seconds for record in records),
        "max_answer_tokens": args.max_tokens,
        "question": QUESTION,
        "model": loaded.name,
        "quantization": loaded.quantization,
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    with args.out.with_name(args.out.stem + "_tasks.jsonl").open("w") as rows:
        rows.writelines(json.dumps(asdict(record)) + "\n" for record in records)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
