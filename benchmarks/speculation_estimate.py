"""What draft-model speculation (the 0.5B drafting k tokens, the 1.5B verifying them in one forward
pass) would gain on this CPU, computed from measured parts before it is built.

    python benchmarks/speculation_estimate.py    # a few minutes; writes benchmarks/results/speculation_estimate.json

It needs the 1.5B's answers and both models' decode figures from `benchmarks/model_tiers.py run`
(parts multi_line, chat and decode for embedded-1.5b, decode for embedded).

**Acceptance, exactly as greedy speculation would see it.** Greedy speculation keeps a drafted token
when it is the token the target model would have written. So the 0.5B is run once over each of the
1.5B's own greedy answers, prompt included (teacher forcing): at each position its argmax, given the
1.5B's text so far, is what it would draft there. An iteration from position i accepts the run of
positions that agree, at most k, and the 1.5B adds one token of its own; replaying that over the
answer gives the iterations that speculation would take. (The draft's argmax here comes from the
multi-row bf16 path, its decode from the int8 kernel: they can differ in a rare near-tie.)

**Cost of an iteration** = k draft decode steps + one 1.5B forward pass of k + 1 rows, from the
decode tok/s of each model (through the engine) and the 1.5B's forward time by number of rows. The
estimated speed-up is the 1.5B's plain decode time for the answer over the speculative time.

The prompts are rebuilt by the product's own builders, as in its plain case:
`build_fim_prompt_around` at the hole's cursor (line-start healing included, no repository
context, which these one-file tasks have none of), and `build_chat_prompt` for a new session
with the benchmark's question.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.chat_humaneval import QUESTION  # noqa: E402
from benchmarks.humaneval_tasks import load_problems, sample_multi_line_tasks  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TIERS = RESULTS / "model_tiers"
DRAFT_LENGTHS = (1, 2, 4, 8)  # k + 1 rows: the row counts that model_tiers.py times (2, 3, 5, 9)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def multi_line_sequences(tokenizer) -> list[tuple[list[int], list[int]]]:
    from fimble.completion.prompt import Cursor, build_fim_prompt_around, split_at_cursor

    tasks = {task.task_id: task for task in sample_multi_line_tasks(load_problems(), 100)}
    sequences = []
    for record in read_jsonl(TIERS / "embedded-1.5b" / "multi_line_tasks.jsonl"):
        if not record["completion"] or record["error"]:
            continue
        task = tasks[record["task_id"]]
        prefix, suffix = split_at_cursor(task.document, Cursor(task.cursor_line, 0))
        prompt = build_fim_prompt_around(prefix, suffix, tokenizer, token_ids=False)
        # The model wrote the healed line start first; the completion shown has it stripped.
        sequences.append(split_tokens(tokenizer, prompt.text, prompt.healed + record["completion"]))
    return sequences


def chat_sequences(tokenizer) -> list[tuple[list[int], list[int]]]:
    from fimble.chat.prompt import ChatBudget, build_chat_prompt
    from fimble.chat.session import ChatSession, Message

    problems = {problem.task_id: problem for problem in load_problems()}
    sequences = []
    for record in read_jsonl(TIERS / "embedded-1.5b" / "chat_tasks.jsonl"):
        question = Message("user", QUESTION.format(prompt=problems[record["task_id"]].prompt))
        session = ChatSession(record["task_id"], "", 0.0, 0.0, [question], [])
        prompt = build_chat_prompt(session, tokenizer, tokenizer.chat_template, ChatBudget(answer_tokens=512))
        sequences.append(split_tokens(tokenizer, prompt.text, record["answer"]))
    return sequences


def split_tokens(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """The prompt's tokens and the answer's, as the whole text encodes them (the model saw the
    answer's tokens after the prompt's, not the answer encoded alone)."""
    prompt_ids = tokenizer.encode(prompt)
    whole = tokenizer.encode(prompt + answer)
    if whole[: len(prompt_ids)] != prompt_ids:  # a token across the seam: not seen in these prompts
        raise ValueError("the answer's first token merges with the prompt's last")
    return prompt_ids, whole[len(prompt_ids) :]


def agreement(model, prompt_ids: list[int], answer_ids: list[int]) -> list[bool]:
    """For each answer token: is it the draft model's argmax given the text before it?"""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]
    return (logits.argmax(dim=-1) == torch.tensor(answer_ids)).tolist()


def iterations(agrees: list[bool], k: int) -> int:
    """Speculative iterations to write the answer: each accepts up to k agreeing drafts, then the
    target adds one token of its own."""
    position, count = 0, 0
    while position < len(agrees):
        accepted = 0
        while accepted < k and position + accepted < len(agrees) and agrees[position + accepted]:
            accepted += 1
        position += accepted + 1
        count += 1
    return count


def estimate(kind: str, agreements: list[list[bool]], draft_s: float, target_s: float, rows_ms: dict[str, float]) -> dict:
    tokens = sum(len(a) for a in agreements)
    by_k = {}
    for k in DRAFT_LENGTHS:
        steps = sum(iterations(a, k) for a in agreements)
        verify_s = target_s * rows_ms[str(k + 1)] / rows_ms["1"]
        speculative_s = steps * (k * draft_s + verify_s)
        by_k[str(k)] = {
            "tokens_per_iteration": round(tokens / steps, 3),
            "verify_cost_in_decode_steps": round(verify_s / target_s, 2),
            "estimated_speedup": round(tokens * target_s / speculative_s, 3),
        }
    return {
        "kind": kind,
        "answers": len(agreements),
        "tokens": tokens,
        "accept_rate": round(sum(map(sum, agreements)) / tokens, 4),
        "accept_rate_median_answer": round(statistics.median(sum(a) / len(a) for a in agreements if a), 4),
        "by_draft_length": by_k,
    }


def main() -> int:
    from fimble.models.loading import load_model
    from fimble.models.spec import ModelSpec

    decode = {source: json.loads((TIERS / source / "decode.json").read_text()) for source in ("embedded", "embedded-1.5b")}
    draft = load_model(ModelSpec(source="embedded"))
    result = {
        "draft_model": draft.name,
        "target_model": decode["embedded-1.5b"]["model"],
        "draft_decode_tok_s": decode["embedded"]["decode_tok_s"],
        "target_decode_tok_s": decode["embedded-1.5b"]["decode_tok_s"],
        "target_forward_ms_by_rows": decode["embedded-1.5b"]["forward_ms_by_rows"],
        "kinds": [],
        "command": "python benchmarks/speculation_estimate.py",
    }
    draft_s, target_s = 1 / result["draft_decode_tok_s"], 1 / result["target_decode_tok_s"]
    for kind, sequences in (("multi_line", multi_line_sequences(draft.tokenizer)), ("chat", chat_sequences(draft.tokenizer))):
        agreements = [agreement(draft.model, prompt, answer) for prompt, answer in sequences if answer]
        result["kinds"].append(estimate(kind, agreements, draft_s, target_s, result["target_forward_ms_by_rows"]))
        print(json.dumps(result["kinds"][-1]), file=sys.stderr, flush=True)
    (RESULTS / "speculation_estimate.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
