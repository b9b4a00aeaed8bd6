"""The embedded models side by side, each serving every role: HumanEval single-line and multi-line
infilling through `fimble lsp`, chat HumanEval through the chat service, decode speed and memory.

    python benchmarks/model_tiers.py run embedded-1.5b --parts multi_line decode chat
    python benchmarks/model_tiers.py summarize

`run` writes one file per part under benchmarks/results/model_tiers/<source>/, each by the suite's
own benchmark (humaneval_infill.py, chat_humaneval.py) with a config that gives the model every
role, and then summarizes. The parts and their time on 2 vCPUs: `single_line` (1,033 tasks, or
every K-th with --single-line-every K; 25 min for the 0.5B, about 2.3x that for the 1.5B),
`multi_line` (the 100-task sample; 5 and 12 min), `chat` (164 problems; 25 min for the 0.5B),
`decode` (a few minutes: decode tok/s and RSS through the engine, then the time of one forward
pass of 1 to 9 new tokens, which is what a speculative verification costs against a decode step).

`summarize` writes benchmarks/results/model_tiers.json: a list `models`, each entry with `model`,
`single_line_pass_at_1`, `single_line_p50_s`, `multi_line_pass_at_1`, `multi_line_p50_s`,
`chat_pass_at_1`, `chat_p50_s`, `decode_tok_s` and `rss_mb` (the `_n` keys say on how many tasks),
and beside it `speculative`. A part not run here for a model is taken from the suite's full run of
that benchmark (benchmarks/results/humaneval_infill.json, chat_humaneval.json) when that run was of
the same model, and is null otherwise; each entry's `sources` names the file (in benchmarks/results/) behind each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PARTS = ("single_line", "multi_line", "chat", "decode")
DECODE_TOKENS = 160
DECODE_PROMPTS = (
    "# utilities.py: small helpers for paths, text and numbers, each with a docstring\n\nimport os\nimport re\n\n\ndef ",
    "class LinkedList:\n    \"\"\"A singly linked list with append, pop, find, reverse and __iter__.\"\"\"\n\n    def __init__(self):\n",
    "// A small HTTP router in TypeScript with path parameters and middleware\n\nexport class Router {\n",
)


def config_text(source: str) -> str:
    return "".join(f'[models.{role}]\nsource = "{source}"\n\n' for role in ("single_line", "multi_line", "chat"))


def part_file(source: str, part: str, results: Path = RESULTS) -> Path:
    return results / "model_tiers" / source / f"{part}.json"


def run_part(source: str, part: str, config: Path, single_line_every: int, chat_limit: int | None) -> None:
    env = dict(os.environ, FIMBLE_CONFIG=str(config), FIMBLE_DAEMON_STANDBY="0")
    out = part_file(source, part)
    out.parent.mkdir(parents=True, exist_ok=True)
    if part == "single_line":
        command = [sys.executable, str(ROOT / "benchmarks" / "humaneval_infill.py"), "--skip-multi-line", "--every", str(single_line_every), "--out", str(out)]
    elif part == "multi_line":
        command = [sys.executable, str(ROOT / "benchmarks" / "humaneval_infill.py"), "--skip-single-line", "--out", str(out)]
    elif part == "chat":
        command = [sys.executable, str(ROOT / "benchmarks" / "chat_humaneval.py"), "--out", str(out)]
        command += ["--limit", str(chat_limit)] if chat_limit else []
    else:
        command = [sys.executable, __file__, "decode-here", "--out", str(out)]
    started = time.monotonic()
    print(f"model_tiers: {source} {part}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="fimble-tiers-") as runtime:
        env["FIMBLE_RUNTIME_DIR"] = runtime  # a daemon of this part's own, stopped after it
        try:
            subprocess.run(command, env=env, check=True)
        finally:
            subprocess.run([sys.executable, "-m", "fimble", "daemon", "stop"], env=env, capture_output=True, timeout=120)
    print(f"model_tiers: {source} {part} took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def decode_here(out: Path) -> None:
    """Decode speed and memory of the multi_line role's model, in this process (FIMBLE_CONFIG names it)."""
    import psutil

    from fimble.models.config import load_role_config
    from fimble.models.generation import GenerationRequest
    from fimble.models.pool import EnginePool
    from fimble.models.spec import Role

    pool = EnginePool(load_role_config())
    try:
        engine = pool.engine_for(Role.MULTI_LINE)
        tokenizer = engine.loaded.tokenizer
        runs = []
        for prompt in ("def warm_up():\n", *DECODE_PROMPTS):
            request = GenerationRequest(Role.MULTI_LINE, DECODE_TOKENS, prompt_ids=tuple(tokenizer.encode(prompt)))
            runs.append(engine.generate(request).stats)
        measured = runs[1:]  # the first request warms up the kernels
        result = {
            "model": engine.loaded.name,
            "quantization": engine.loaded.quantization,
            "decode_tok_s": round(statistics.median(stats.decode_tok_s for stats in measured), 2),
            "decode_tok_s_each": [round(stats.decode_tok_s, 2) for stats in measured],
            "generated_tokens_each": [stats.generated_tokens for stats in measured],
            # After loading and generating: the weights, the bf16 prefill copy and the KV cache's pages.
            "rss_mb": round(psutil.Process().memory_info().rss / 2**20),
            "threads": engine.loaded.spec.threads or None,
        }
        loaded = engine.loaded
    finally:
        pool.close()
    result["forward_ms_by_rows"] = forward_ms_by_rows(loaded.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def forward_ms_by_rows(model, rows=(1, 2, 3, 5, 9), repeats=5) -> dict[str, float]:
    """One forward pass of 1, 2, ... new tokens after a 512-token prompt: what a speculative
    verification of k drafted tokens (k + 1 rows) costs against one decode step (1 row)."""
    import torch
    from transformers import DynamicCache

    prompt = torch.randint(100, 20000, (1, 512))
    timings = {}
    with torch.no_grad():
        for n in rows:
            samples = []
            for _ in range(repeats):
                cache = DynamicCache()
                model(prompt, past_key_values=cache, use_cache=True)
                started = time.perf_counter()
                model(torch.randint(100, 20000, (1, n)), past_key_values=cache, use_cache=True)
                samples.append(time.perf_counter() - started)
            timings[str(n)] = round(1000 * statistics.median(samples), 1)
    return timings


# --- summarize ------------------------------------------------------------------------------------


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def figures(source: str, name: str, results: Path = RESULTS) -> dict:
    """One model's entry, from its part files, or the suite's full runs of the same model."""
    sources: dict[str, str] = {}

    def part(key: str, full_run: str | None) -> dict | None:
        data = read(part_file(source, key, results))
        if data is not None:
            sources[key] = f"model_tiers/{source}/{key}.json"
            return data
        data = read(results / full_run) if full_run else None
        if data is not None and data.get("model") == name:
            sources[key] = full_run
            return data
        return None

    single = part("single_line", "humaneval_infill.json") or {}
    multi = part("multi_line", "humaneval_infill.json") or {}
    chat = part("chat", "chat_humaneval.json") or {}
    decode = part("decode", None) or {}
    return {
        "model": name,
        "source": source,
        "single_line_pass_at_1": single.get("single_line_pass_at_1"),
        "single_line_n": single.get("single_line_n"),
        "single_line_p50_s": single.get("p50_latency_s"),
        "multi_line_pass_at_1": multi.get("multi_line_pass_at_1"),
        "multi_line_n": multi.get("multi_line_n"),
        "multi_line_p50_s": multi.get("multi_line_p50_latency_s"),
        "chat_pass_at_1": chat.get("pass_at_1"),
        "chat_n": chat.get("n"),
        "chat_p50_s": chat.get("p50_answer_s"),
        "decode_tok_s": decode.get("decode_tok_s"),
        "rss_mb": decode.get("rss_mb"),
        "sources": sources,
    }


def summarize() -> dict:
    from fimble.models.embedded import EMBEDDED_MODELS

    result = {
        "models": [figures(source, model.name) for source, model in EMBEDDED_MODELS.items()],
        # Draft-model speculation (the 0.5B drafting for the 1.5B) is not built: nothing measured.
        "speculative": {"accept_rate": None, "multi_line_speedup": None, "chat_speedup": None},
        "machine": machine(),
        "command": "python benchmarks/model_tiers.py run SOURCE --parts ...; python benchmarks/model_tiers.py summarize",
    }
    (RESULTS / "model_tiers.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "unknown")
    return {"cpu": model, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run parts of the benchmark for one embedded model")
    run.add_argument("source", help='an embedded model\'s source, as in the config ("embedded", "embedded-1.5b")')
    run.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    run.add_argument("--single-line-every", type=int, default=1, help="every K-th single-line task")
    run.add_argument("--chat-limit", type=int, default=None, help="only the first N chat problems")
    commands.add_parser("summarize", help="write model_tiers.json from the parts run so far")
    here = commands.add_parser("decode-here", help=argparse.SUPPRESS)
    here.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "decode-here":
        decode_here(args.out)
        return 0
    if args.command == "run":
        from fimble.models.embedded import EMBEDDED_MODELS

        if args.source not in EMBEDDED_MODELS:
            parser.error(f"{args.source!r} is not an embedded model: one of {', '.join(EMBEDDED_MODELS)}")
        with tempfile.TemporaryDirectory(prefix="fimble-tiers-") as work:
            config = Path(work) / "config.toml"
            config.write_text(config_text(args.source))
            for part in args.parts:
                run_part(args.source, part, config, args.single_line_every, args.chat_limit)
    print(json.dumps(summarize(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
