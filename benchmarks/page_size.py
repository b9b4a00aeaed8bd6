"""Which KV page size suits keystroke edits: the warm keystroke replay at several page sizes.

    python benchmarks/page_size.py      # writes benchmarks/results/page_size.json

The cache is shared by whole pages, so after an edit up to page_size - 1 unchanged tokens before it
are recomputed; smaller pages cost more bookkeeping per step. Each page size types the same
stretches of the file with an engine of its own (so no run reuses another's cache), and the sizes
are interleaved over two rounds, because this machine is noisy.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from keystroke_replay import (  # noqa: E402
    RESULTS,
    AutoTokenizer,
    EngineConfig,
    FimBudget,
    GenerationRequest,
    ModelSpec,
    Role,
    ensure_embedded_checkpoint,
    keystroke_prompts,
    replay_engine,
    start_engine,
    typed_file,
)

PAGE_SIZES = (16, 64, 256)  # 256 is transformers' default
KEYSTROKES = 12


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_checkpoint())
    text = typed_file().read_text()
    start_lines = iter((400, 560))
    ttfts: dict[int, list[float]] = {size: [] for size in PAGE_SIZES}
    cached: dict[int, list[float]] = {size: [] for size in PAGE_SIZES}
    for _round in range(2):
        prompts = keystroke_prompts(text, next(start_lines), KEYSTROKES + 1, tokenizer, FimBudget())
        ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        for size in PAGE_SIZES:
            with start_engine(ModelSpec(), EngineConfig(page_size=size)) as engine:
                engine.generate(GenerationRequest(Role.SINGLE_LINE, 2, tuple(ids[0][:64])))
                rows = replay_engine(engine, ids)[1:]  # the first keystroke fills the cache
            ttfts[size] += [r["ttft_s"] for r in rows]
            cached[size] += [r["cached_tokens"] / r["prompt_tokens"] for r in rows]
            print(f"page {size}: warm ttft p50 {statistics.median(ttfts[size]):.3f} s", flush=True)
    result = {
        "warm_ttft_p50_s": {str(s): statistics.median(ttfts[s]) for s in PAGE_SIZES},
        "cached_token_fraction": {str(s): statistics.mean(cached[s]) for s in PAGE_SIZES},
        "keystrokes_per_size": 2 * KEYSTROKES,
        "model": "embedded Qwen2.5-Coder-0.5B, int8-weight-only, CPU",
    }
    (RESULTS / "page_size.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
