"""Keystroke replay: a person types lines of a real third-party file, and every keystroke asks for a
single-line completion at the cursor. Run with the prefix cache off, then on, in one process, then
the same prompts through llama.cpp (the peer) on the same GGUF file and thread count.

    python benchmarks/keystroke_replay.py            # writes benchmarks/results/keystroke_replay.{json,png}

The typed file is `requests/sessions.py` from the installed requests package. The replay types
`--keystrokes` characters starting at line `--start-line`; at each keystroke the prefix is the file
up to the cursor and the suffix is the file after the line being typed (what is already written
below), both trimmed to the same FIM budgets the product uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fimble.completion.prompt import FimBudget, prefix_window_start, suffix_window  # noqa: E402
from fimble.models.embedded import EMBEDDED_MODEL_NAME, concatenate_parts, ensure_embedded_checkpoint, find_gguf_parts  # noqa: E402
from fimble.models.engine import Engine, EngineConfig  # noqa: E402
from fimble.models.families import QWEN25_CODER  # noqa: E402
from fimble.models.generation import GenerationRequest, StopRules  # noqa: E402
from fimble.models.loading import default_threads  # noqa: E402
from fimble.models.pool import start_engine  # noqa: E402
from fimble.models.spec import ModelSpec, Role  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from tests.llama_server import llama_cpp_site  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MAX_NEW_TOKENS = 24


def typed_file() -> Path:
    spec = importlib.util.find_spec("requests")
    return Path(spec.origin).parent / "sessions.py"


def keystroke_prompts(text: str, start_line: int, keystrokes: int, tokenizer, budget: FimBudget) -> list[str]:
    """One FIM prompt per keystroke: the text typed so far, and the file below the current line."""
    lines = text.splitlines(keepends=True)
    position = sum(len(line) for line in lines[:start_line])
    prompts = []
    for position in range(position + 1, position + keystrokes + 1):
        prefix = text[:position]
        line_end = text.find("\n", position)
        suffix = text[line_end + 1 :] if line_end >= 0 else ""
        prefix = prefix[prefix_window_start(prefix, tokenizer, budget) :]
        prompts.append(QWEN25_CODER.fim.render(prefix, suffix_window(suffix, tokenizer, budget)))
    return prompts


def replay_engine(engine: Engine, prompt_ids: list[list[int]]) -> list[dict]:
    rows = []
    for ids in prompt_ids:
        stop = StopRules(token_ids=QWEN25_CODER.stop_token_ids(engine.tokenizer.get_vocab()), strings=("\n",))
        result = engine.generate(GenerationRequest(Role.SINGLE_LINE, MAX_NEW_TOKENS, tuple(ids), stop=stop))
        rows.append({"ttft_s": result.stats.ttft_s, "suggestion_s": result.stats.total_s, "prompt_tokens": result.stats.prompt_tokens,
                     "cached_tokens": result.stats.cached_tokens, "text": result.text})
    return rows


def engine_decode_tok_s(engine: Engine, ids: list[int], tokens: int = 64) -> float:
    result = engine.generate(GenerationRequest(Role.SINGLE_LINE, tokens, tuple(ids)))  # no stop rule: decode all 64
    return result.stats.decode_tok_s


def replay_llama_cpp(llm, prompt_ids: list[list[int]], cold: bool) -> list[dict]:
    rows = []
    for ids in prompt_ids:
        if cold:
            llm.reset()  # forgets the evaluated tokens, so no prefix of the last prompt is reused
        start = time.perf_counter()
        ttft = None
        text = ""
        for chunk in llm.create_completion(ids, max_tokens=MAX_NEW_TOKENS, temperature=0.0, stream=True, stop=["\n"]):
            ttft = ttft or time.perf_counter() - start
            text += chunk["choices"][0]["text"]
        rows.append({"ttft_s": ttft, "suggestion_s": time.perf_counter() - start, "prompt_tokens": len(ids), "text": text})
    return rows


def llama_cpp_decode_tok_s(llm, ids: list[int], tokens: int = 64) -> float:
    llm.reset()
    stamps = []
    for _ in llm.generate(ids, temp=0.0, reset=True):
        stamps.append(time.perf_counter())
        if len(stamps) == tokens:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows if r[key] is not None)


def plot(path: Path, series: dict[str, list[dict]], title: str = "Keystroke replay, embedded Qwen2.5-Coder-0.5B on CPU") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for label, rows in series.items():
        ax.plot(range(1, len(rows) + 1), [r["ttft_s"] for r in rows], marker=".", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("keystroke")
    ax.set_ylabel("time to first token (s, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keystrokes", type=int, default=24)
    parser.add_argument("--start-line", type=int, default=400)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--no-peer", action="store_true", help="skip llama.cpp (built for this CPU on first use, about 5 minutes)")
    args = parser.parse_args()

    spec = ModelSpec(threads=args.threads)
    budget = FimBudget()
    source = typed_file()
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_checkpoint())
    prompts = keystroke_prompts(source.read_text(), args.start_line, args.keystrokes, tokenizer, budget)
    prompt_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    print(f"{len(prompt_ids)} keystrokes in {source}, {args.threads} threads", flush=True)

    engine_rows = {}
    for label, prefix_cache in (("cold", False), ("warm", True)):
        with start_engine(spec, EngineConfig(prefix_cache=prefix_cache)) as engine:
            loaded = engine.loaded
            engine.generate(GenerationRequest(Role.SINGLE_LINE, 2, tuple(prompt_ids[0][:64])))  # one-time warm-up of kernels
            engine_rows[label] = replay_engine(engine, prompt_ids)
            if prefix_cache:
                decode = engine_decode_tok_s(engine, prompt_ids[-1])
        print(f"fimble {label}: ttft p50 {median(engine_rows[label], 'ttft_s'):.3f} s", flush=True)

    cached = sum(r["cached_tokens"] for r in engine_rows["warm"][1:])
    total = sum(r["prompt_tokens"] for r in engine_rows["warm"][1:])
    result = {
        "cold_ttft_p50_s": median(engine_rows["cold"], "ttft_s"),
        "warm_ttft_p50_s": median(engine_rows["warm"][1:], "ttft_s"),  # the first warm keystroke is a cold one
        # What the user waits for while typing: from the request to the whole single-line suggestion.
        "time_to_suggestion_p50_s": median(engine_rows["warm"][1:], "suggestion_s"),
        "decode_tok_s": decode,
        "speculative_accept_rate": None,  # the engine does not speculate (benchmarks/decode_profile.py says why)
        "cached_token_fraction": cached / total,
        "prompt_tokens_p50": statistics.median(r["prompt_tokens"] for r in engine_rows["warm"]),
        "keystrokes": len(prompt_ids),
        "threads": args.threads,
        "device": f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads)",
        "cpu": cpu_model(),  # figures from different CPUs are not comparable
        "model": EMBEDDED_MODEL_NAME,
        "quantization": loaded.quantization,
        "fim_budget": asdict(budget),
        "engine_config": asdict(EngineConfig()),
        "typed_file": f"requests/{source.name} from line {args.start_line + 1}",
        "torch": torch.__version__,
    }
    result["ratio_warm_over_cold"] = result["warm_ttft_p50_s"] / result["cold_ttft_p50_s"]
    series = {"fimble, prefix cache off": engine_rows["cold"], "fimble, prefix cache on": engine_rows["warm"]}

    if not args.no_peer:
        sys.path.insert(0, str(llama_cpp_site()))  # built for this CPU, once (tests/llama_server.py)
        from llama_cpp import Llama

        with tempfile.TemporaryDirectory() as tmp:
            gguf = Path(tmp) / "model.gguf"
            concatenate_parts(find_gguf_parts(), gguf)
            llm = Llama(str(gguf), n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
            peer_cold = replay_llama_cpp(llm, prompt_ids, cold=True)
            llm.reset()
            peer_warm = replay_llama_cpp(llm, prompt_ids, cold=False)
            result["peer_decode_tok_s"] = llama_cpp_decode_tok_s(llm, prompt_ids[-1])
        import llama_cpp

        result["peer_cold_ttft_p50_s"] = median(peer_cold, "ttft_s")
        result["peer_warm_ttft_p50_s"] = median(peer_warm[1:], "ttft_s")
        result["peer_time_to_suggestion_p50_s"] = median(peer_warm[1:], "suggestion_s")
        result["peer"] = f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, same GGUF, {args.threads} threads"
        result["peer_same_first_line_fraction"] = statistics.mean(
            a["text"] == b["text"] for a, b in zip(engine_rows["warm"], peer_warm)
        )
        series["llama.cpp, cache reset"] = peer_cold
        series["llama.cpp, prompt cache"] = peer_warm
        result["goals"] = {
            "ratio_warm_over_cold <= 0.15": result["ratio_warm_over_cold"] <= 0.15,
            "warm_ttft_p50_s <= peer_warm_ttft_p50_s": result["warm_ttft_p50_s"] <= result["peer_warm_ttft_p50_s"],
            "decode_tok_s >= peer_decode_tok_s": result["decode_tok_s"] >= result["peer_decode_tok_s"],
            "time_to_suggestion_p50_s <= 0.6 x peer": result["time_to_suggestion_p50_s"] <= 0.6 * result["peer_time_to_suggestion_p50_s"],
        }

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "keystroke_replay.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(RESULTS / "keystroke_replay.png", series)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
