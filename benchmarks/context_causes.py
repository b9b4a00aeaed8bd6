"""Why repository context made ordinary lines worse, cause by cause, and what the gate changes.

    python benchmarks/context_causes.py      # writes benchmarks/results/context_causes.json

No model runs here. The input is an ordinary-holes run with the context on at every cursor
(`context.retrieve.repository_context` with `only_when_needed=False`):
results/ordinary_holes_context_always_holes.jsonl, 180 holes of the embedded 0.5B, paired with
and without context, each scored by the library's own tests (benchmarks/ordinary_holes.py, which
also downloads the library trees read here). For each hole the context is built again as the
server built it: the library's index, the file with the hole's line emptied, and the documents of
the library's earlier holes as the recently edited files.

1. **The window.** Does the context take tokens from the in-file prefix or suffix window? The
   windows of every hole's prompt are compared with and without its context.
2. **Relevance.** Of the holes whose outcome changed with context, how many have a line that uses
   a name the file lacks and the context holds? If none, the context changed answers without
   giving the model anything it needed.
3. **The gate.** At how many cursors `names_the_file_lacks` finds a name: the ordinary holes, and
   the cross-file holes of results/repo_context_sample_holes.jsonl (a line that calls a function
   another file defines), at the called name and at the line's start.
4. **The noise floor.** In a run with the gate (results/ordinary_holes_embedded_holes.jsonl), a
   hole where the gate stays shut gets the same prompt from both servers. Its two answers still
   differ when one is computed cold and the other from the prefix cache (the servers take turns
   asking first): the cached path's numbers are not bit-equal to the cold path's on the real
   model. Counted: those holes, and how many changed answers and outcomes they hold.
5. **The cache.** Each hole's line is typed a character at a time. The context comes before the
   file in the prompt, so when it changes between keystrokes, everything after the change is
   prefilled again. Counted: the keystrokes that change the context, and the prompt tokens that
   must be prefilled again because of it, with the context at every cursor and with the gate.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ordinary_holes import LIBRARIES, fetch, with_line, work_dir  # noqa: E402
from fimble.completion.prompt import build_fim_prompt_around  # noqa: E402
from fimble.context.indexer import WorkspaceIndex  # noqa: E402
from fimble.context.retrieve import identifiers, names_the_file_lacks, repository_context  # noqa: E402
from fimble.context.store import IndexStore  # noqa: E402
from fimble.lsp_server.workspace_context import RECENT_DOCUMENTS  # noqa: E402
from fimble.models.embedded import ensure_embedded_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ALWAYS_RUN = RESULTS / "ordinary_holes_context_always_holes.jsonl"
CROSS_FILE_HOLES = RESULTS / "repo_context_sample_holes.jsonl"
CONTEXT_TOKENS = 1024  # the server's default contextTokens


@dataclass(frozen=True)
class Cursor:
    """A hole's document and cursor, with what the server knew when it was asked."""

    index: WorkspaceIndex
    path: str  # relative to the index's root
    prefix: str
    suffix: str
    recent: dict[str, str]  # the recently edited documents

    def read_text(self, relative: str) -> str | None:
        return (self.index.root / relative).read_text(encoding="utf-8")


def outcome(record: dict) -> str:
    """How context changed a hole: "gained", "lost", "both" (passed either way) or "neither"."""
    with_, without = record["with"]["passed"], record["without"]["passed"]
    return {(True, True): "both", (True, False): "gained", (False, True): "lost", (False, False): "neither"}[(with_, without)]


def names_the_line_needs(line_code: str, document: str) -> set[str]:
    """The identifiers of a hole's line that its document (with the line emptied) does not hold:
    what no in-file pattern can teach the model."""
    return set(identifiers(line_code)) - set(identifiers(document))


class Workspaces:
    """One index per library tree, built once (the trees never change)."""

    def __init__(self) -> None:
        self.indexes: dict[Path, WorkspaceIndex] = {}
        self.store = work_dir() / "index"  # beside the trees; a rerun parses nothing again

    def index(self, root: Path) -> WorkspaceIndex:
        if root not in self.indexes:
            index = WorkspaceIndex(root, IndexStore(root, self.store))
            index.build()
            self.indexes[root] = index
        return self.indexes[root]


def ordinary_cursors(records: list[dict], trees: dict[str, Path], workspaces: Workspaces) -> list[tuple[dict, Cursor]]:
    """Each hole as the server saw it, its library's earlier holes open as recent documents."""
    recent_by_library: dict[str, OrderedDict[str, str]] = {}
    cursors = []
    for record in records:
        tree = trees[record["library"]]
        document = with_line((tree / record["path"]).read_text(encoding="utf-8"), record["line"], record["indent"])
        offset = sum(len(line) + 1 for line in document.split("\n")[: record["line"]]) + len(record["indent"])
        recent = recent_by_library.setdefault(record["library"], OrderedDict())
        recent[record["path"]] = document
        recent.move_to_end(record["path"])
        while len(recent) > RECENT_DOCUMENTS:
            recent.popitem(last=False)
        cursors.append((record, Cursor(workspaces.index(tree), record["path"], document[:offset], document[offset:], dict(recent))))
    return cursors


def context_at(cursor: Cursor, count_tokens, only_when_needed: bool) -> str:
    return repository_context(
        cursor.index, cursor.path, cursor.prefix, cursor.suffix, cursor.recent, count_tokens, CONTEXT_TOKENS, cursor.read_text, only_when_needed=only_when_needed
    )


def always_context(cursor: Cursor, count_tokens) -> str:
    return context_at(cursor, count_tokens, only_when_needed=False)


def gated_context(cursor: Cursor, count_tokens) -> str:
    return context_at(cursor, count_tokens, only_when_needed=True)


# --- 1. the window ------------------------------------------------------------------------------


def window_changes(cursors: list[tuple[dict, Cursor]], contexts: list[str], tokenizer) -> dict:
    """`contexts`: each cursor's context, at every cursor."""
    changed = 0
    for (_, cursor), context in zip(cursors, contexts):
        plain = build_fim_prompt_around(cursor.prefix, cursor.suffix, tokenizer)
        with_context = build_fim_prompt_around(cursor.prefix, cursor.suffix, tokenizer, context=context)
        changed += (plain.prefix, plain.suffix) != (with_context.prefix, with_context.suffix)
    return {"holes": len(cursors), "holes_whose_windows_change_with_context": changed}


# --- 2. relevance -------------------------------------------------------------------------------


def relevance(cursors: list[tuple[dict, Cursor]], contexts: list[str]) -> dict:
    """`contexts`: each cursor's context, at every cursor."""
    rows = []
    for (record, cursor), context in zip(cursors, contexts):
        needed = names_the_line_needs(record["code"], cursor.prefix + cursor.suffix)
        held = needed & set(identifiers(context))
        rows.append({"key": record["key"], "outcome": outcome(record), "needs": sorted(needed), "context_holds": sorted(held)})
    changed = [row for row in rows if row["outcome"] in ("gained", "lost")]
    return {
        "holes": len(rows),
        "gained": sum(row["outcome"] == "gained" for row in rows),
        "lost": sum(row["outcome"] == "lost" for row in rows),
        "lines_needing_a_name_their_file_lacks": sum(bool(row["needs"]) for row in rows),
        "of_which_the_context_holds_one": sum(bool(row["context_holds"]) for row in rows),
        "changed_outcomes_where_the_context_holds_a_needed_name": sum(bool(row["context_holds"]) for row in changed),
        "lines_needing_a_name": [row for row in rows if row["needs"]],
    }


# --- 3. the gate --------------------------------------------------------------------------------


def gate_on_ordinary_holes(cursors: list[tuple[dict, Cursor]]) -> dict:
    fires = [record["key"] for record, cursor in cursors if names_the_file_lacks(cursor.index, cursor.path, cursor.prefix, cursor.suffix)]
    return {"holes": len(cursors), "gate_opens": len(fires), "keys": fires}


def gate_on_cross_file_holes(path: Path, workspaces: Workspaces) -> dict:
    """The holes of benchmarks/repo_context.py, in the installed packages it reads."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    opens = {"call": 0, "line-start": 0}
    for record in records:
        spec = importlib.util.find_spec(record["package"])
        if spec is None or spec.origin is None:
            raise SystemExit(f"{record['package']} is not installed; benchmarks/repo_context.py reads its installed source")
        root = Path(spec.origin).parent
        index = workspaces.index(root)
        lines = (root / record["path"]).read_text(encoding="utf-8").splitlines(keepends=True)
        for cursor, column in (("call", record["name_column"]), ("line-start", 0)):
            before = "".join(lines[: record["line"]]) + record["indent"] + record["code"][:column]
            after = "\n" + "".join(lines[record["line"] + 1 :])
            opens[cursor] += bool(names_the_file_lacks(index, record["path"], before, after))
    return {"holes": len(records), "gate_opens_at_the_called_name": opens["call"], "gate_opens_at_the_line_start": opens["line-start"]}


# --- 4. the noise floor -------------------------------------------------------------------------


def noise_floor(cursors: list[tuple[dict, Cursor]]) -> dict:
    shut = [record for record, cursor in cursors if not names_the_file_lacks(cursor.index, cursor.path, cursor.prefix, cursor.suffix)]
    return {
        "holes": len(cursors),
        "gate_shut": len(shut),
        "different_answers_with_the_gate_shut": sum(r["with"]["completion"] != r["without"]["completion"] for r in shut),
        "gained_with_the_gate_shut": sum(outcome(r) == "gained" for r in shut),
        "lost_with_the_gate_shut": sum(outcome(r) == "lost" for r in shut),
    }


# --- 5. the cache -------------------------------------------------------------------------------


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def typing_churn(cursors: list[tuple[dict, Cursor]], tokenizer, count_tokens) -> dict:
    """Each hole's line typed a character at a time, its context built at every keystroke."""
    policies = {"always": always_context, "gated": gated_context}
    keystrokes = 0
    changed = {name: 0 for name in policies}
    extra_tokens = {name: [] for name in policies}
    context_tokens = {name: [] for name in policies}
    for record, cursor in cursors:
        previous: dict[str, str] = {}
        for typed in range(len(record["code"]) + 1):
            prefix = cursor.prefix + record["code"][:typed]
            in_file_tokens = len(build_fim_prompt_around(prefix, cursor.suffix, tokenizer).token_ids)
            step = Cursor(cursor.index, cursor.path, prefix, cursor.suffix, cursor.recent)
            keystrokes += typed > 0
            for name, policy in policies.items():
                context = policy(step, count_tokens)
                context_tokens[name].append(count_tokens(context))
                if typed > 0:
                    moved = context != previous[name]
                    changed[name] += moved
                    # A change recomputes the context from where it differs, and the whole file part after it.
                    extra_tokens[name].append(count_tokens(context[first_difference(context, previous[name]) :]) + in_file_tokens if moved else 0)
                previous[name] = context
    return {
        "keystrokes": keystrokes,
        **{
            name: {
                "keystrokes_that_change_the_context_pct": round(100 * changed[name] / keystrokes, 1),
                "extra_prefill_tokens_per_keystroke_mean": round(statistics.mean(extra_tokens[name]), 1),
                "cursors_with_context_pct": round(100 * sum(t > 0 for t in context_tokens[name]) / len(context_tokens[name]), 1),
                "context_tokens_mean": round(statistics.mean(context_tokens[name]), 1),
            }
            for name in policies
        },
    }


def shown_path(path: Path) -> str:
    root = RESULTS.parent.parent
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holes", type=Path, default=ALWAYS_RUN, help="an ordinary-holes run with context at every cursor")
    parser.add_argument("--gated-holes", type=Path, default=RESULTS / "ordinary_holes_embedded_holes.jsonl", help="an ordinary-holes run with the gate")
    parser.add_argument("--out", type=Path, default=RESULTS / "context_causes.json")
    args = parser.parse_args()
    started = time.perf_counter()
    records = read_records(args.holes)
    trees = {library.label: fetch(library, work_dir()) for library in LIBRARIES}
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_checkpoint())

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    workspaces = Workspaces()
    cursors = ordinary_cursors(records, trees, workspaces)
    contexts = [always_context(cursor, count_tokens) for _, cursor in cursors]
    result = {
        "holes_file": shown_path(args.holes),
        "gated_holes_file": shown_path(args.gated_holes),
        "context_tokens": CONTEXT_TOKENS,
        "window": window_changes(cursors, contexts, tokenizer),
        "relevance": relevance(cursors, contexts),
        "gate": {"ordinary_holes": gate_on_ordinary_holes(cursors), "cross_file_holes": gate_on_cross_file_holes(CROSS_FILE_HOLES, workspaces)},
        "noise": noise_floor(ordinary_cursors(read_records(args.gated_holes), trees, workspaces)),
        "cache": typing_churn(cursors, tokenizer, count_tokens),
        "command": " ".join(["python", "benchmarks/context_causes.py", *sys.argv[1:]]),
        "seconds": round(time.perf_counter() - started, 1),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {key: value for key, value in result.items() if key not in ("relevance",)}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
