"""HumanEval through the chat path: each of the 164 problems is asked as a chat question, the code
block is taken from the answer and run against the problem's tests.

    python benchmarks/chat_humaneval.py    # writes benchmarks/results/chat_humaneval.{json,_tasks.jsonl}

The path is the product's: `chat.service.ChatService.ask` (Fimble's system prompt, the model's own
chat template, a new session per problem) with the in-process engine, as the daemon runs it, on the
embedded model, greedy. The program run is the problem's prompt (its imports and signature), then
the answer's code block, which redefines the function, then the tests, in the sandboxed subprocess
the infilling benchmark uses.

The Qwen2.5-Coder technical report gives 61.6% HumanEval pass@1 for Qwen2.5-Coder-0.5B-Instruct
(70.7% for the 1.5B); this path should lose at most 3 points of it to prompt or extraction mistakes.

    python benchmarks/chat_humaneval.py --prompt reference --out benchmarks/results/chat_humaneval_reference.json

asks the same model the way Qwen's own evaluation does (EvalPlus's instruct prompt, the template's
default system prompt, and the answer started with EvalPlus's response prefix), on the same engine,
so the two runs side by side separate what our prompt and extraction cost from what the weights
cost: the embedded GGUF is Q4_K_M (converted from the AWQ checkpoint), not the bf16 weights the
report measured.

    python benchmarks/chat_humaneval.py --rescore [--out ...]

scores the saved answers again (after a change to extraction), without the model.
"""

from __future__ import annotations

import argparse
import ast
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
from fimble.chat.service import ChatRequest, ChatService  # noqa: E402
from fimble.chat.session import SessionStore  # noqa: E402
from fimble.models.backend import EngineBackend  # noqa: E402
from fimble.models.generation import GenerationRequest, StopRules  # noqa: E402
from fimble.models.config import load_role_config  # noqa: E402
from fimble.models.pool import EnginePool  # noqa: E402
from fimble.models.spec import Role  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# HumanEval pass@1 of the bf16 models, from the Qwen2.5-Coder technical report (arXiv 2409.12186).
REPORTED_PASS_AT_1 = {"Qwen2.5-Coder-0.5B-Instruct": 0.616, "Qwen2.5-Coder-1.5B-Instruct": 0.707}


def reported_pass_at_1(model: str) -> float | None:
    return next((figure for name, figure in REPORTED_PASS_AT_1.items() if model.startswith(name)), None)
QUESTION = "Complete the following Python function. Reply with the whole function in one Python code block.\n\n```python\n{prompt}```"
# EvalPlus's instruct-model prompt and response prefix, which Qwen2.5-Coder's evaluation uses.
REFERENCE_INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:\n"
    "```\n{prompt}\n```\n"
)
REFERENCE_RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem and passes corresponding tests:\n"
    "```python\n"
)
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


def code_from_answer(answer: str, entry_point: str, cut: bool = False) -> str:
    """The answer's code block that defines the function (else its first Python block, else the
    first block); an answer without fences is taken whole. An unclosed last fence counts up to the
    end; when the answer was `cut` by the length cap, up to its last complete statement."""
    code = _block_with(answer, entry_point)
    return complete_statements(code) if cut else code


def _block_with(answer: str, entry_point: str) -> str:
    blocks = [(language.lower(), body) for language, body in _FENCE.findall(answer)]
    if not blocks:
        return answer
    for language, body in blocks:
        if re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", body, re.MULTILINE):
            return body
    python = [body for language, body in blocks if language in ("python", "py", "python3")]
    return (python or [blocks[0][1]])[0]


def complete_statements(code: str) -> str:
    """The longest run of whole lines from the start that parses. An answer cut by the length
    cap often holds a finished function and then a test loop cut mid-line (EvalPlus's prompt asks
    for tests): scored whole, that is a SyntaxError that says nothing of the function."""
    lines = code.split("\n")
    while lines:
        try:
            ast.parse("\n".join(lines))
            break
        except SyntaxError:
            lines.pop()
    return "\n".join(lines)


def program_for(problem: Problem, code: str) -> str:
    # The prompt first: its imports and helper functions stay available when the answer drops them.
    return check_program(problem, f"{problem.prompt}\n    pass\n\n{code}")


async def solve(service: ChatService, problem: Problem, max_tokens: int, limits: SandboxLimits) -> Record:
    started = time.perf_counter()
    answer = await service.ask(ChatRequest(QUESTION.format(prompt=problem.prompt), max_answer_tokens=max_tokens))
    seconds = time.perf_counter() - started
    return await checked(problem, answer.text, answer.finish_reason, seconds, limits)


async def checked(problem: Problem, answer: str, finish_reason: str, seconds: float, limits: SandboxLimits) -> Record:
    """The answer's code run against the problem's tests."""
    code = code_from_answer(answer, problem.entry_point, cut=finish_reason == "length")
    result = await asyncio.to_thread(run_python, program_for(problem, code), limits)
    return Record(problem.task_id, result.passed, code, answer, finish_reason, seconds, "" if result.passed else result.stderr_tail[-300:])


def reference_prompt(tokenizer, problem: Problem) -> str:
    """EvalPlus's prompt as a single user turn (the template adds its default system prompt), with
    the assistant's answer already started by the response prefix."""
    messages = [{"role": "user", "content": REFERENCE_INSTRUCTION.format(prompt=problem.prompt.strip())}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + REFERENCE_RESPONSE_PREFIX


async def solve_reference(backend: EngineBackend, problem: Problem, max_tokens: int, limits: SandboxLimits) -> Record:
    """Qwen's evaluation prompt on the same engine, bypassing Fimble's chat prompt."""
    served = await backend.model(Role.CHAT)
    tokenizer = served.tokenizer
    started = time.perf_counter()
    ids = tokenizer.encode(reference_prompt(tokenizer, problem), add_special_tokens=False)
    stop = StopRules(token_ids=served.chat_stop_token_ids, strings=("\n```",))
    generated = await backend.generate(GenerationRequest(Role.CHAT, max_tokens, tuple(ids), stop=stop))
    seconds = time.perf_counter() - started
    return await checked(problem, REFERENCE_RESPONSE_PREFIX + generated.text, generated.finish_reason, seconds, limits)


async def run(solve_one, problems: list[Problem]) -> list[Record]:
    records = []
    for problem in problems:
        records.append(await solve_one(problem))
        if len(records) % 10 == 0 or len(records) == len(problems):
            passed = sum(record.passed for record in records)
            print(f"{len(records)}/{len(problems)}: pass@1 {passed / len(records):.1%}", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems (quick runs)")
    parser.add_argument("--max-tokens", type=int, default=512, help="answer length cap")
    parser.add_argument("--out", type=Path, default=RESULTS / "chat_humaneval.json")
    parser.add_argument(
        "--prompt", choices=("fimble", "reference"), default="fimble", help="Fimble's chat path, or Qwen's evaluation prompt (EvalPlus)"
    )
    parser.add_argument(
        "--rescore", action="store_true", help="score the answers saved next to --out again (after a change to extraction), without the model"
    )
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(args.out)

    problems = load_problems()[: args.limit]
    pool = EnginePool(load_role_config())
    try:
        with tempfile.TemporaryDirectory() as data:
            backend = EngineBackend(pool)
            service = ChatService(SessionStore(Path(data)), backend)
            limits = SandboxLimits()
            if args.prompt == "fimble":
                solve_one = lambda problem: solve(service, problem, args.max_tokens, limits)  # noqa: E731
            else:
                solve_one = lambda problem: solve_reference(backend, problem, args.max_tokens, limits)  # noqa: E731
            records = asyncio.run(run(solve_one, problems))
        loaded = pool.engine_for(Role.CHAT).loaded
    finally:
        pool.close()

    result = scores(records, loaded.name) | {
        "max_answer_tokens": args.max_tokens,
        "prompt": args.prompt,
        "question": QUESTION if args.prompt == "fimble" else REFERENCE_INSTRUCTION + "[assistant] " + REFERENCE_RESPONSE_PREFIX,
        "model": loaded.name,
        "quantization": loaded.quantization,
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs)",
    }
    write(args.out, result, records)
    return 0


def scores(records: list[Record], model: str) -> dict:
    pass_at_1 = sum(record.passed for record in records) / len(records)
    reported = reported_pass_at_1(model)
    return {
        "pass_at_1": pass_at_1,
        "n": len(records),
        "reported_pass_at_1": reported,
        "points_below_reported": None if reported is None else 100 * (reported - pass_at_1),
        "answers_cut_by_length": sum(record.finish_reason == "length" for record in records),
        "p50_answer_s": statistics.median(record.seconds for record in records),
    }


def rescore(out: Path) -> int:
    saved = [json.loads(line) for line in out.with_name(out.stem + "_tasks.jsonl").read_text().splitlines()]
    problems = {problem.task_id: problem for problem in load_problems()}
    limits = SandboxLimits()

    async def again() -> list[Record]:
        return [await checked(problems[row["task_id"]], row["answer"], row["finish_reason"], row["seconds"], limits) for row in saved]

    records = asyncio.run(again())
    saved_result = json.loads(out.read_text())
    write(out, saved_result | scores(records, saved_result["model"]), records)
    return 0


def write(out: Path, result: dict, records: list[Record]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    with out.with_name(out.stem + "_tasks.jsonl").open("w") as rows:
        rows.writelines(json.dumps(asdict(record)) + "\n" for record in records)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
