"""Repository context lift: does the index make completions know the rest of the code?

    python benchmarks/repo_context.py        # writes benchmarks/results/repo_context.{json,png,_holes.jsonl}

Holes in the spirit of CrossCodeEval, in the installed sources of five third-party packages
(requests, click, rich, jinja2, urllib3): a line whose code calls a function or method that is
defined in *another* file of the same package, is not defined in the current file, and is not used
earlier in it except in an import (calls on stdlib modules and names that builtin types also have
are left out). The line is typed up to the called name (`--cursor call`, the default: `client.`
or `url = `) or not at all (`--cursor line-start`, CrossCodeEval's setting); the rest of the line is
removed, and the embedded model completes it, with the repository context on and off. Scored on the first
line: exact match and edit similarity (rapidfuzz's normalized Indel ratio, as CrossCodeEval's
`fuzz.ratio`).

The path is the product's: `completion.service.complete` with the in-process engine, the context
from `lsp_server.workspace_context.WorkspaceContext` over a `context.indexer.WorkspaceIndex` of the
package (the file itself opened as an editor buffer, as `didOpen` does).

Latency is what a typing user sees. In the editor every keystroke asks for a completion, so the
prompt up to the cursor is in the prefix cache when the next key arrives. Each hole is asked twice:
at the hole (scored; its time is the cold latency, as when the cursor jumps to a new place), then
with the line's first character typed (its time is the typing latency, `p50_latency_*`). Both
conditions do the same, interleaved hole by hole, so machine noise falls on both alike.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import builtins
import importlib.util
import io
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rapidfuzz import fuzz

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fimble.models.backend import EngineBackend  # noqa: E402
from fimble.completion.service import CompletionRequest, CompletionSettings, complete  # noqa: E402
from fimble.context.indexer import WorkspaceIndex  # noqa: E402
from fimble.context.store import IndexStore  # noqa: E402
from fimble.lsp_server.workspace_context import WorkspaceContext  # noqa: E402
from fimble.models.config import load_role_config  # noqa: E402
from fimble.models.pool import EnginePool  # noqa: E402
from fimble.models.spec import Role  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("requests", "click", "rich", "jinja2", "urllib3")
SEED = 20261125
PER_PACKAGE, PER_FILE = 100, 12  # the default sample: 309 holes
# Single-line completions, every one shown (the benchmark scores what the model writes).
SETTINGS = CompletionSettings(multi_line=False, abstain_below_logprob=None)
# Names that the standard library's types also have: a call to `.get` or `.update` is as likely a
# dict's as the package's own method, and would not measure cross-file knowledge.
_BUILTIN_NAMES = set(dir(builtins)).union(
    *(dir(kind) for kind in (str, bytes, dict, list, set, tuple, int, float, object, io.TextIOBase, io.BufferedIOBase, re.Match, re.Pattern))
)


@dataclass(frozen=True)
class Hole:
    package: str
    path: str  # relative to the package's directory
    line: int  # 0-based
    indent: str
    code: str  # the line's code after its indentation
    name: str  # the function or method defined in another file that the line calls
    name_column: int  # where `name` starts in `code`

    def split(self, cursor: str) -> tuple[str, str]:
        """(typed before the cursor, to complete): at the line's start, or just before the name."""
        at = 0 if cursor == "line-start" else self.name_column
        return self.code[:at], self.code[at:]


@dataclass(frozen=True)
class Attempt:
    text: str
    exact: bool
    similarity: float
    latency_s: float
    cold_latency_s: float
    context_files: int


# --- choosing holes ---------------------------------------------------------------------------------


def package_root(name: str) -> Path:
    return Path(importlib.util.find_spec(name).origin).parent


def called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def import_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            lines.update(range(node.lineno - 1, (node.end_lineno or node.lineno)))
    return lines


def statement_starts(tree: ast.Module) -> dict[int, ast.stmt]:
    """The simple statements by their first line (0-based); definitions and compound headers are
    left out, so the hole is a line of code a person writes in a body."""
    simple = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return)
    return {node.lineno - 1: node for node in ast.walk(tree) if isinstance(node, simple)}


def imported_modules(tree: ast.Module) -> set[str]:
    """Names bound by `import x` / `import x as y`: a call `x.f()` is another package's function."""
    return {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def holes_in_file(package: str, relative: str, text: str, index: WorkspaceIndex) -> list[Hole]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = text.splitlines()
    defined_here = {fields["name"] for fields in index.entries[relative].symbols}
    imports = import_lines(tree)
    modules = imported_modules(tree)
    holes = []
    for number, statement in sorted(statement_starts(tree).items()):
        code = lines[number].strip()
        if not 8 <= len(code) <= 120 or statement.end_lineno != statement.lineno:
            continue
        prefix_code = "\n".join(line for i, line in enumerate(lines[:number]) if i not in imports)
        for call in ast.walk(statement):
            name = called_name(call) if isinstance(call, ast.Call) else None
            if name is None or name.startswith("__") or len(name) < 3 or name in _BUILTIN_NAMES or name in defined_here:
                continue
            receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
            if isinstance(receiver, ast.Name) and receiver.id in modules:
                continue  # os.path.join(), pickle.load(): not this package's code
            if not any(definition.path != relative for definition in index.definitions(name)):
                continue
            if re.search(rf"\b{re.escape(name)}\b", prefix_code):
                continue  # used above: the file itself shows how to call it
            line = lines[number]
            indent = line[: len(line) - len(line.lstrip())]
            # ast columns count UTF-8 bytes; the name ends where the callee expression does.
            name_end = len(line.encode("utf-8")[: call.func.end_col_offset].decode("utf-8"))
            holes.append(Hole(package, relative, number, indent, code, name, name_end - len(name) - len(indent)))
            break
    return holes


def choose_holes(package: str, index: WorkspaceIndex, per_package: int, per_file: int, rng: random.Random) -> list[Hole]:
    """A seeded sample spread over the package's files (at most `per_file` from one file)."""
    candidates: list[Hole] = []
    for relative in sorted(index.entries):
        if "/tests/" in f"/{relative}" or not relative.endswith(".py"):
            continue
        text = (index.root / relative).read_text(encoding="utf-8")
        in_file = holes_in_file(package, relative, text, index)
        candidates += rng.sample(in_file, min(per_file, len(in_file)))
    chosen = rng.sample(candidates, min(per_package, len(candidates)))
    return sorted(chosen, key=lambda hole: (hole.path, hole.line))


# --- asking -----------------------------------------------------------------------------------------


def document_with_hole(text: str, hole: Hole, cursor: str) -> tuple[str, int]:
    """The file with the hole's code removed from the cursor on, and the cursor offset."""
    lines = text.splitlines(keepends=True)
    before = "".join(lines[: hole.line]) + hole.indent + hole.split(cursor)[0]
    after = "\n" + "".join(lines[hole.line + 1 :])
    return before + after, len(before)


def first_line(text: str) -> str:
    """The completion's text up to the end of the cursor's line (the service has already dropped
    what a healed line start adds)."""
    return text.split("\n", 1)[0].strip()


async def attempt(backend, workspace: WorkspaceContext, hole: Hole, truth: str, text: str, offset: int, with_context: bool, settings) -> Attempt:
    """The completion at the hole (scored; its latency is the cold one, as when the cursor jumps
    there), then the next keystroke, the line's first character typed (its latency is the typing one:
    the prompt is cached up to the cursor)."""
    path = workspace.root / hole.path

    async def timed(document: str, cursor: int):
        source = workspace.context_source(path, document[:cursor], document[cursor:]) if with_context else None
        started = time.perf_counter()
        completion = await complete(CompletionRequest(document, cursor, "python", explicit=True), settings, backend, source)
        return completion, time.perf_counter() - started

    completion, cold = await timed(text, offset)
    typed = text[:offset] + truth[0] + text[offset:]
    _, warm = await timed(typed, offset + 1)
    predicted = first_line(completion.text)
    return Attempt(predicted, predicted == truth, fuzz.ratio(predicted, truth) / 100, warm, cold, len(completion.context_files))


# --- the run ----------------------------------------------------------------------------------------


def index_package(package: str, cache_dir: Path) -> WorkspaceContext:
    root = package_root(package)
    workspace = WorkspaceContext(root, WorkspaceIndex(root, IndexStore(root, cache_dir)))
    report = workspace.index.build()
    workspace.ready.set()  # the watcher is not needed: the files don't change
    print(f"{package}: indexed {report.files} files in {report.seconds:.2f} s", flush=True)
    return workspace


def sample_holes(cache_dir: Path, per_package: int = PER_PACKAGE, per_file: int = PER_FILE) -> tuple[dict[str, WorkspaceContext], dict[str, list[Hole]]]:
    """Every package indexed, and the seeded sample of holes in each (the same draws every run)."""
    rng = random.Random(SEED)
    workspaces = {package: index_package(package, cache_dir) for package in PACKAGES}
    holes = {p: choose_holes(p, workspaces[p].index, per_package, per_file, rng) for p in PACKAGES}
    return workspaces, holes


async def run(holes_by_package: dict[str, list[Hole]], workspaces: dict[str, WorkspaceContext], backend, settings, cursor: str) -> list[dict]:
    records = []
    total = sum(len(holes) for holes in holes_by_package.values())
    sequence = 0
    for package, holes in holes_by_package.items():
        workspace = workspaces[package]
        for hole in holes:
            text, offset = document_with_hole((workspace.root / hole.path).read_text(encoding="utf-8"), hole, cursor)
            truth = hole.split(cursor)[1]
            sequence += 1
            workspace.document_changed(workspace.root / hole.path, text, sequence)  # as didOpen
            # Alternate which condition goes first, so neither always finds the other's cache.
            order = (False, True) if len(records) % 2 == 0 else (True, False)
            results = {flag: await attempt(backend, workspace, hole, truth, text, offset, flag, settings) for flag in order}
            records.append({**asdict(hole), "truth": truth, "with": asdict(results[True]), "without": asdict(results[False])})
            done = len(records)
            if done % 10 == 0 or done == total:
                print(f"{done}/{total}  exact match with {rate(records, 'with'):.1%}, without {rate(records, 'without'):.1%}", flush=True)
    return records


def rate(records: list[dict], condition: str) -> float:
    return sum(record[condition]["exact"] for record in records) / len(records)


def median_of(records: list[dict], condition: str, key: str) -> float:
    return statistics.median(record[condition][key] for record in records)


def summary(records: list[dict], settings: CompletionSettings, model: dict) -> dict:
    result = {
        "exact_match_with_context": rate(records, "with"),
        "exact_match_without_context": rate(records, "without"),
        "edit_similarity_with": statistics.mean(r["with"]["similarity"] for r in records),
        "edit_similarity_without": statistics.mean(r["without"]["similarity"] for r in records),
        "n": len(records),
        "p50_latency_with_s": median_of(records, "with", "latency_s"),
        "p50_latency_without_s": median_of(records, "without", "latency_s"),
        # The request at the hole itself, as when the cursor jumps there: nothing of the prompt is
        # cached but what earlier holes left. The typing latency above is what the prefix cache gives.
        "p50_cold_latency_with_s": median_of(records, "with", "cold_latency_s"),
        "p50_cold_latency_without_s": median_of(records, "without", "cold_latency_s"),
    }
    result["lift_points"] = 100 * (result["exact_match_with_context"] - result["exact_match_without_context"])
    result["latency_ratio"] = result["p50_latency_with_s"] / result["p50_latency_without_s"]
    result["by_package"] = {
        package: {
            "n": len(rows),
            "exact_match_with_context": rate(rows, "with"),
            "exact_match_without_context": rate(rows, "without"),
        }
        for package in PACKAGES
        if (rows := [r for r in records if r["package"] == package])
    }
    result["holes_with_context_files"] = sum(r["with"]["context_files"] > 0 for r in records)
    result["settings"] = {"context_tokens": settings.context_tokens, "fim_budget": asdict(settings.budget)}
    result["model"] = model
    result["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs)"
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    packages = list(result["by_package"])
    labels = [f"{p}\n(n={result['by_package'][p]['n']})" for p in packages] + [f"all\n(n={result['n']})"]
    without = [result["by_package"][p]["exact_match_without_context"] * 100 for p in packages] + [result["exact_match_without_context"] * 100]
    with_ = [result["by_package"][p]["exact_match_with_context"] * 100 for p in packages] + [result["exact_match_with_context"] * 100]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], without, width=0.4, label="without repository context")
    ax.bar([x + 0.2 for x in xs], with_, width=0.4, label="with repository context")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("exact match of the line, %")
    ax.set_title(f"Cross-file holes, embedded model (p50 latency ×{result['latency_ratio']:.2f} with context)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-package", type=int, default=PER_PACKAGE, help="holes per package")
    parser.add_argument("--per-file", type=int, default=PER_FILE, help="at most this many holes from one file")
    parser.add_argument(
        "--cursor",
        choices=("call", "line-start"),
        default="call",
        help="where the cursor is on the hole's line: just before the called name (default), or at the line's start",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "repo_context.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as cache:
        workspaces, holes = sample_holes(Path(cache), args.per_package, args.per_file)
        print("holes: " + ", ".join(f"{p} {len(h)}" for p, h in holes.items()), flush=True)
        pool = EnginePool(load_role_config())
        try:
            backend = EngineBackend(pool)
            engine = pool.engine_for(Role.SINGLE_LINE)
            # Threads matter for the latencies: FIMBLE_CONFIG may set fewer than the default.
            model = {"name": engine.loaded.name, "quantization": engine.loaded.quantization, "torch_threads": torch.get_num_threads()}
            records = asyncio.run(run(holes, workspaces, backend, SETTINGS, args.cursor))
        finally:
            pool.close()
    result = summary(records, SETTINGS, model)
    result["cursor"] = args.cursor
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    with args.out.with_name(args.out.stem + "_holes.jsonl").open("w") as rows:
        rows.writelines(json.dumps(record) + "\n" for record in records)
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
