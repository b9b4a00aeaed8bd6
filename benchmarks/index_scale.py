"""Index scale: the workspace index on a large real tree, the installed `transformers` sources.

    python benchmarks/index_scale.py        # writes benchmarks/results/index_scale.json

The tree is copied to a temporary folder (the save test edits a file), and the store goes to a
temporary cache dir. Each phase runs in a fresh process, as an editor start would:

1. build: index everything from nothing (files/s, peak RSS of that process, store size);
2. restart: a new process indexes the unchanged tree again (`restart_s`: the whole `build()`,
   which loads the store and stats every file, reads none);
3. save: with the watcher running (`WorkspaceContext`, as in `fimble lsp`), a file is saved with a
   new function `--saves` times; `save_to_index_s` is the median time from the write to the new
   definition being found by `definitions()`, and `save_to_store_s` until the store file is rewritten.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fimble.context.indexer import WorkspaceIndex  # noqa: E402
from fimble.context.store import IndexStore  # noqa: E402
from fimble.lsp_server.workspace_context import WorkspaceContext  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EDITED_FILE = "models/bert/modeling_bert.py"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def phase_build(root: Path, cache: Path) -> dict:
    index = WorkspaceIndex(root, IndexStore(root, cache))
    report = index.build()
    return {
        "files": report.files,
        "parsed": report.parsed,
        "seconds": report.seconds,
        "definitions": sum(len(entry.symbols) for entry in index.entries.values()),
        "peak_rss_mb": peak_rss_mb(),
        "store_mb": index.store.path.stat().st_size / 1e6,
    }


def phase_restart(root: Path, cache: Path) -> dict:
    started = time.perf_counter()
    index = WorkspaceIndex(root, IndexStore(root, cache))
    report = index.build()
    return {"restart_s": time.perf_counter() - started, "reused": report.reused, "parsed": report.parsed, "peak_rss_mb": peak_rss_mb()}


def wait_until(condition, timeout_s: float = 10.0) -> float:
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError("the index did not follow the save")
        time.sleep(0.001)
    return time.perf_counter() - started


def phase_save(root: Path, cache: Path, saves: int) -> dict:
    workspace = WorkspaceContext(root, WorkspaceIndex(root, IndexStore(root, cache)))
    workspace.build()
    edited = root / EDITED_FILE
    original = edited.read_text(encoding="utf-8")
    store = workspace.index.store.path
    to_index, to_store = [], []
    try:
        for number in range(saves):
            name = f"fimble_saved_{number}"
            before = store.stat().st_mtime_ns
            started = time.perf_counter()
            edited.write_text(original + f"\n\ndef {name}(value):\n    return value\n", encoding="utf-8")
            wait_until(lambda: workspace.index.definitions(name))
            to_index.append(time.perf_counter() - started)
            wait_until(lambda: store.stat().st_mtime_ns != before)
            to_store.append(time.perf_counter() - started)
            time.sleep(0.3)  # apart, so the watcher sees separate saves rather than one burst
    finally:
        workspace.stop()
    return {
        "save_to_index_s": statistics.median(to_index),
        "save_to_index_max_s": max(to_index),
        "save_to_store_s": statistics.median(to_store),
        "saves": saves,
        "watcher_quiet_s": 0.05,
    }


PHASES = {"build": phase_build, "restart": phase_restart, "save": phase_save}


def run_phase(name: str, root: Path, cache: Path, *extra: str) -> dict:
    command = [sys.executable, __file__, "--phase", name, "--root", str(root), "--cache", str(cache), *extra]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--saves", type=int, default=15)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "index_scale.json")
    args = parser.parse_args(argv)

    if args.phase:  # a child process
        extra = (args.saves,) if args.phase == "save" else ()
        print(json.dumps(PHASES[args.phase](args.root, args.cache, *extra)))
        return 0

    source = Path(importlib.util.find_spec("transformers").origin).parent
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "transformers", Path(tmp) / "cache"
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("__pycache__"))
        print(f"indexing a copy of {source}", flush=True)
        build = run_phase("build", root, cache)
        print(f"build: {build['files']} files in {build['seconds']:.1f} s, peak RSS {build['peak_rss_mb']:.0f} MB", flush=True)
        restarts = [run_phase("restart", root, cache) for _ in range(args.restarts)]
        print(f"restart: {[round(r['restart_s'], 3) for r in restarts]} s", flush=True)
        save = run_phase("save", root, cache, "--saves", str(args.saves))
        print(f"save -> index: median {save['save_to_index_s'] * 1000:.0f} ms", flush=True)

    result = {
        "files": build["files"],
        "files_per_s": build["files"] / build["seconds"],
        "peak_rss_mb": build["peak_rss_mb"],
        "store_mb": build["store_mb"],
        "restart_s": statistics.median(r["restart_s"] for r in restarts),
        "save_to_index_s": save["save_to_index_s"],
        "build_s": build["seconds"],
        "definitions": build["definitions"],
        "restart_runs_s": [r["restart_s"] for r in restarts],
        "restart_reparsed_files": max(r["parsed"] for r in restarts),
        "restart_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in restarts),
        "save_to_index_max_s": save["save_to_index_max_s"],
        "save_to_store_s": save["save_to_store_s"],
        "saves": save["saves"],
        "tree": f"transformers {importlib.metadata.version('transformers')} sources ({source.name}/)",
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
