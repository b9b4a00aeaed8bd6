"""What candidates cost and give: HumanEval single-line through `fimble lsp`, one suggestion per
request against three, side by side on one daemon.

    python benchmarks/candidates.py                 # every 10th task (104), ~10 min; candidates.json

Three servers share the daemon (and so its prefix KV cache), each with its own suggestion cache:
- `warm`: asks first, so the task's prompt is in the prefix cache (its latency is the cold one);
- `one`: `candidates` 1, then `three`: `candidates` 3, each on the warm cache. What they differ by
  is what candidates add: the branches' decoding, not a prefill that either would pay.

Every server never abstains, has no debounce and no latency budget, so the model alone is scored.
Single-line tasks are scored as `humaneval_infill.py` scores them (the first line of an item, the
problem's tests in a sandbox). Writes `benchmarks/results/candidates.json`:
- `one` / `three`: `latency_p50_ms`, `latency_p90_ms`, `pass_first` (the first item passes);
  `three` also `pass_any` (some item passes) and `items_mean` (distinct items offered);
- `cost_ratio_p50`: the median over tasks of three's latency over one's;
- `first_item_unchanged_fraction`: tasks where three's first item is one's item;
- `cold_latency_p50_ms`: the warm-up's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.editor_replay import percentile  # noqa: E402
from benchmarks.humaneval_infill import FimbleSession, check, log, parse_settings  # noqa: E402
from benchmarks.humaneval_tasks import load_problems, single_line_tasks  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.sandbox import SandboxLimits  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SESSIONS = {"warm": 1, "one": 1, "three": 3}


def percentile_ms(values: list[float], q: int) -> float:
    return round(1000 * percentile(values, q), 1)


async def run(args) -> dict:
    base = parse_settings(["--max-latency-ms", "0", "--out", str(RESULTS / "candidates.json")])
    tasks = single_line_tasks(load_problems())[:: args.every][: args.limit]
    sessions = {}
    for name, candidates in SESSIONS.items():
        settings = replace(base, server_options={"candidates": candidates})
        sessions[name] = FimbleSession(Path(f"/tmp/fimble-candidates-{name}.log"), settings)
        await sessions[name].start()
    latencies: dict[str, list[float]] = {name: [] for name in SESSIONS}
    passed = {"one": 0, "three_first": 0, "three_any": 0}
    items, same_first, ratios = [], 0, []
    limits = SandboxLimits(timeout_s=10.0)
    try:
        with ThreadPoolExecutor(max_workers=1) as checker:
            for number, task in enumerate(tasks, start=1):
                answers = {name: await session.complete_all(task) for name, session in sessions.items()}
                for name in SESSIONS:
                    latencies[name].append(answers[name][0].latency_s)
                ratios.append(answers["three"][0].latency_s / answers["one"][0].latency_s)
                offered = [answer for answer in answers["three"] if answer.insert_text]
                items.append(len(offered))
                same_first += answers["three"][0].insert_text == answers["one"][0].insert_text
                one_passes = checker.submit(check, task, answers["one"][0], limits).result().passed
                three_passes = [checker.submit(check, task, answer, limits).result().passed for answer in offered]
                passed["one"] += one_passes
                passed["three_first"] += bool(three_passes and three_passes[0])
                passed["three_any"] += any(three_passes)
                if number % 10 == 0 or number == len(tasks):
                    log(f"{number}/{len(tasks)}: one {passed['one']}, three any {passed['three_any']}, ratio p50 {statistics.median(ratios):.2f}")
    finally:
        for session in sessions.values():
            await session.stop()
    n = len(tasks)
    return {
        "tasks": n,
        "every": args.every,
        "cold_latency_p50_ms": percentile_ms(latencies["warm"], 50),
        "one": {
            "latency_p50_ms": percentile_ms(latencies["one"], 50),
            "latency_p90_ms": percentile_ms(latencies["one"], 90),
            "pass_first": round(passed["one"] / n, 4),
        },
        "three": {
            "latency_p50_ms": percentile_ms(latencies["three"], 50),
            "latency_p90_ms": percentile_ms(latencies["three"], 90),
            "pass_first": round(passed["three_first"] / n, 4),
            "pass_any": round(passed["three_any"] / n, 4),
            "items_mean": round(statistics.mean(items), 3),
        },
        "cost_ratio_p50": round(statistics.median(ratios), 3),
        "first_item_unchanged_fraction": round(same_first / n, 4),
        "machine": {"cpu": cpu_model(), "python": platform.python_version()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=10, help="take every K-th single-line task")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "candidates.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
