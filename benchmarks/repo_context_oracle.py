"""The ceiling of repository context for the embedded model: the same cross-file holes as
`repo_context.py`, asked with no context, with Fimble's retrieved context, and with an oracle
context that holds nothing but the called function's own definition(s) (what a perfect retriever
would find first).

    python benchmarks/repo_context_oracle.py    # writes benchmarks/results/repo_context_oracle.{json,_holes.jsonl}

If the oracle lifts exact match little, no retrieval can do much better with this model: the
limit is what the model does with context it is given, not what we find. Every `--every`-th hole
of the seeded sample (the full sample is 309 holes), one cold request per hole and condition, the
conditions interleaved hole by hole; the typing latency is `repo_context.py`'s business.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rapidfuzz import fuzz

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.repo_context import RESULTS, SETTINGS, Hole, document_with_hole, first_line, sample_holes  # noqa: E402
from fimble.models.backend import EngineBackend  # noqa: E402
from fimble.completion.service import CompletionRequest, CompletionSettings, complete  # noqa: E402
from fimble.context.retrieve import Snippet, definition_bodies, format_repo_context  # noqa: E402
from fimble.lsp_server.workspace_context import WorkspaceContext  # noqa: E402
from fimble.models.config import load_role_config  # noqa: E402
from fimble.models.pool import EnginePool  # noqa: E402
from fimble.models.spec import Role  # noqa: E402

CONDITIONS = ("none", "retrieved", "oracle")


def oracle_source(workspace: WorkspaceContext, hole: Hole):
    """A context source with only the definitions of the name the hole calls, in the same format."""
    bodies = definition_bodies(workspace.index, hole.name, hole.path, lambda path: (workspace.root / path).read_text(encoding="utf-8"))
    snippets = [Snippet(path, text, 1.0) for path, text in bodies]

    def source(tokenizer, budget_tokens: int, repo) -> str:
        count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        return format_repo_context(workspace.root.name, snippets, hole.path, count, budget_tokens, repo)

    return source


async def ask_hole(backend, workspace: WorkspaceContext, hole: Hole, settings: CompletionSettings, sequence: int, cursor: str) -> dict:
    text, offset = document_with_hole((workspace.root / hole.path).read_text(encoding="utf-8"), hole, cursor)
    truth = hole.split(cursor)[1]
    workspace.document_changed(workspace.root / hole.path, text, sequence)  # as didOpen
    sources = {
        "none": None,
        "retrieved": workspace.context_source(workspace.root / hole.path, text[:offset], text[offset:]),
        "oracle": oracle_source(workspace, hole),
    }
    # Rotate which condition goes first, so no condition always finds the cache the others left.
    order = CONDITIONS[sequence % 3 :] + CONDITIONS[: sequence % 3]
    record = {"package": hole.package, "path": hole.path, "line": hole.line, "name": hole.name, "truth": truth}
    for condition in order:
        started = time.perf_counter()
        completion = await complete(CompletionRequest(text, offset, "python", explicit=True), settings, backend, sources[condition])
        predicted = first_line(completion.text)
        record[condition] = {
            "text": predicted,
            "exact": predicted == truth,
            "similarity": fuzz.ratio(predicted, truth) / 100,
            "latency_s": time.perf_counter() - started,
        }
    return record


async def run(holes: list[Hole], workspaces: dict[str, WorkspaceContext], backend, settings, cursor: str) -> list[dict]:
    records = []
    for sequence, hole in enumerate(holes):
        records.append(await ask_hole(backend, workspaces[hole.package], hole, settings, sequence, cursor))
        if len(records) % 5 == 0 or len(records) == len(holes):
            rates = ", ".join(f"{c} {rate(records, c):.1%}" for c in CONDITIONS)
            print(f"{len(records)}/{len(holes)}  exact match: {rates}", flush=True)
    return records


def rate(records: list[dict], condition: str) -> float:
    return sum(record[condition]["exact"] for record in records) / len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=5, help="take every N-th hole of the seeded sample")
    parser.add_argument("--cursor", choices=("call", "line-start"), default="call")
    parser.add_argument("--out", type=Path, default=RESULTS / "repo_context_oracle.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as cache:
        # repo_context.py's default sample, so the holes are a subset of it.
        workspaces, by_package = sample_holes(Path(cache))
        sample = [hole for holes in by_package.values() for hole in holes]
        holes = sample[:: args.every]
        print(f"{len(holes)} of {len(sample)} holes", flush=True)
        pool = EnginePool(load_role_config())
        try:
            engine = pool.engine_for(Role.SINGLE_LINE)
            # Threads matter for the latencies: FIMBLE_CONFIG may set fewer than the default.
            model = {"name": engine.loaded.name, "quantization": engine.loaded.quantization, "torch_threads": torch.get_num_threads()}
            records = asyncio.run(run(holes, workspaces, EngineBackend(pool), SETTINGS, args.cursor))
        finally:
            pool.close()

    result = {f"exact_match_{c}": rate(records, c) for c in CONDITIONS}
    result |= {f"edit_similarity_{c}": statistics.mean(r[c]["similarity"] for r in records) for c in CONDITIONS}
    result |= {
        "lift_points_retrieved": 100 * (result["exact_match_retrieved"] - result["exact_match_none"]),
        "lift_points_oracle": 100 * (result["exact_match_oracle"] - result["exact_match_none"]),
        "n": len(records),
        "of_sample": len(sample),
        "cursor": args.cursor,
        "model": model,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    with args.out.with_name(args.out.stem + "_holes.jsonl").open("w") as rows:
        rows.writelines(json.dumps(record) + "\n" for record in records)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
