"""Requests decoding together on the CPU: a step's time for 1 to 8 requests, and whether each
request still gets the answer it gets alone.

    python benchmarks/batch_decode.py      # about 4 minutes; writes benchmarks/results/batch_decode.{json,png}

Several requests decode at once when editors share the daemon, when a suggestion asks for
candidates (its branches), and while a chat answer streams beside completions. Measured side by
side in one process, on the embedded model, for three ways of running a batch:
- `whole_batch`: attention over the whole batch under its block-diagonal mask, as transformers'
  continuous batching hands it over, and every Linear of more than one row on the bf16 copy of the
  weights;
- `per_request_attention`: attention request by request (`models/cpu_attention.py`);
- `per_request_attention_int8_rows` (the engine's default): that, and the rows of every request
  with at most `INT8_KERNEL_MAX_ROWS` of them (a decoding one has 1) through the int8 kernel
  (`models/int8.py`, `RowRouting`).

Each request's prompt is the same 1,400 tokens of a real file (cached) and two of its own, and it
writes 40 tokens greedily. `step_ms` is the median over requests of the time per generated token;
`tok_s` is what the batch writes in all. `answers_equal_alone` counts the requests whose tokens and
logprobs are bit-equal to the same request run alone from the same cache state.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import patch

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.keystroke_replay import RESULTS, typed_file  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from fimble.models import cpu_attention, int8  # noqa: E402
from fimble.models.engine import Engine, EngineConfig  # noqa: E402
from fimble.models.generation import GenerationRequest, GenerationResult  # noqa: E402
from fimble.models.loading import default_threads  # noqa: E402
from fimble.models.pool import start_engine  # noqa: E402
from fimble.models.spec import ModelSpec, Role  # noqa: E402

SHARED_TOKENS = 1400
NEW_TOKENS = 40
BATCH_SIZES = (1, 2, 4, 8)
MODES = ("whole_batch", "per_request_attention", "per_request_attention_int8_rows")


@contextlib.contextmanager
def batch_mode(mode: str) -> Iterator[None]:
    from transformers import AttentionInterface

    with contextlib.ExitStack() as restore:
        if mode == "whole_batch":
            # The attention function without its split by request: the batch's own call.
            AttentionInterface.register("sdpa", cpu_attention._attend)
            restore.callback(AttentionInterface.register, "sdpa", cpu_attention.sdpa_fp32_on_cpu)
        if mode != "per_request_attention_int8_rows":
            # Every forward of more than one row on the bf16 copy, whoever's rows they are.
            restore.enter_context(patch.object(int8, "INT8_KERNEL_MAX_ROWS", 1))
            restore.enter_context(patch.object(int8.RowRouting, "of_batch", classmethod(lambda cls, cu_seq_lens_q: None)))
        yield


def requests_for(prompt: list[int], count: int) -> list[GenerationRequest]:
    """`count` requests on one cached prefix, each with two tokens of its own (no stop rule)."""
    tail = prompt[SHARED_TOKENS:]
    return [GenerationRequest(Role.SINGLE_LINE, NEW_TOKENS, tuple(prompt[:SHARED_TOKENS]) + (tail[2 * i], tail[2 * i + 1])) for i in range(count)]


def run_together(engine: Engine, requests: list[GenerationRequest]) -> list[GenerationResult]:
    handles = [engine.submit(request) for request in requests]
    return [handle.result() for handle in handles]


def same_answer(a: GenerationResult, b: GenerationResult) -> bool:
    return a.stats.cached_tokens == b.stats.cached_tokens and (a.token_ids, a.logprobs) == (b.token_ids, b.logprobs)


def measure(engine: Engine, prompt: list[int], mode: str, repeats: int) -> dict:
    figures = {}
    with batch_mode(mode):
        for count in BATCH_SIZES:
            requests = requests_for(prompt, count)
            for request in requests:
                engine.generate(request)  # each prompt's whole pages cached, as for every run below
            alone = [engine.generate(request) for request in requests]
            runs = [run_together(engine, requests) for _ in range(repeats)]
            step_s = statistics.median(1 / result.stats.decode_tok_s for run in runs for result in run)
            figures[str(count)] = {
                "step_ms": round(step_s * 1e3, 1),
                "tok_s": round(count / step_s, 1),
                "answers_equal_alone": sum(same_answer(a, b) for a, b in zip(alone, runs[0])),
            }
            print(f"{mode}, {count} requests: {json.dumps(figures[str(count)])}", flush=True)
    return figures


def plot(path: Path, modes: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, figures in modes.items():
        ax.plot([int(count) for count in figures], [f["step_ms"] for f in figures.values()], marker="o", label=mode)
    ax.set_xlabel("requests decoding together")
    ax.set_ylabel("ms per generated token (median request)")
    ax.set_xticks(BATCH_SIZES)
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"Batched decode, {SHARED_TOKENS} cached tokens each")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    result: dict = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__, "shared_tokens": SHARED_TOKENS,
                    "new_tokens": NEW_TOKENS, "int8_kernel_max_rows": int8.INT8_KERNEL_MAX_ROWS, "modes": {}}  # fmt: skip
    with start_engine(ModelSpec(threads=args.threads), EngineConfig()) as engine:
        prompt = engine.tokenizer.encode(typed_file().read_text(), add_special_tokens=False)[: SHARED_TOKENS + 2 * max(BATCH_SIZES)]
        engine.generate(GenerationRequest(Role.SINGLE_LINE, 2, tuple(prompt[:SHARED_TOKENS])))
        for mode in MODES:
            result["modes"][mode] = measure(engine, prompt, mode, args.repeats)

    modes = result["modes"]
    result["speedup_at_8"] = round(modes["whole_batch"]["8"]["step_ms"] / modes["per_request_attention_int8_rows"]["8"]["step_ms"], 2)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch_decode.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(RESULTS / "batch_decode.png", modes)
    print(f"wrote {RESULTS / 'batch_decode.json'}")


if __name__ == "__main__":
    main()
