"""Ordinary holes: does the repository context help on the lines people actually type? Scored by
each library's own tests.

    python benchmarks/ordinary_holes.py                          # the embedded default model
    python benchmarks/ordinary_holes.py --source embedded-1.5b   # the 1.5B in every role
    python benchmarks/ordinary_holes.py --per-library 10         # a quick look

Three pure-Python libraries that ship their test suites, pinned below by version and sdist sha256,
are downloaded from PyPI once (none is one benchmarks/repo_context.py tunes on). Each library's
suite runs once under coverage with per-test contexts (pytest-cov's `--cov-context=test`), which
says which tests execute each line. A hole is a random executed line that is one whole logical
line. It qualifies when the tests covering it pass with the line and fail with it emptied: a line
whose tests pass without it measures nothing.

Each hole is asked as an editor asks. The library's tree is the workspace of `fimble lsp`, the
file is opened with the line emptied after its indentation, and an automatic inline completion is
requested at the end of that indentation. Each library has two servers, all on one daemon: one with
the repository context at its default (`contextTokens` 1024), one without it (0). Everything else is
the server's default, abstaining included, except debounce, prefetch and the latency budget (see
SETTINGS). The answer's first line is put back, and the covering tests run on a
copy of the tree (benchmarks/sandbox.py: a child process with a timeout and resource limits).

Reported, paired hole by hole: pass rate, exact match, edit similarity, the holes gained and lost
with context, and the answers that changed the indentation the user had typed. Results:
benchmarks/results/ordinary_holes.json, whose `entries` hold one record per model (a run replaces
its model's record), and one line per hole in ordinary_holes_<source>_holes.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from lsprotocol import types
from pygls.lsp.client import LanguageClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.editor_replay import daemon_env, stop_daemon, wait_until_loaded  # noqa: E402
from benchmarks.humaneval_infill import Answer, answers_from_result, show_document  # noqa: E402
from benchmarks.lsp_text import Position, replace_range  # noqa: E402
from benchmarks.model_tiers import config_text  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.sandbox import SandboxLimits, SandboxResult, run_python  # noqa: E402
from benchmarks.typing_session import log, start_client  # noqa: E402
from fimble import dirs  # noqa: E402
from fimble.models.daemon_client import DaemonClient  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 20261207
PER_LIBRARY = 110  # 330 holes in all
MAX_TESTS_PER_HOLE = 40  # a line that most of the suite runs is checked by a seeded sample of it
CONTEXT_ON = 1024  # the server's default contextTokens
# What only changes when an answer comes: no debounce, no prefetch (lsp_server/settings.py), and no
# latency budget. Each hole is a cold jump to a new line: the 0.5B took 7 to 13 s to answer one here,
# past the 2.5 s budget, which then returns what it has (nothing, that early). While typing, the
# prompt is in the prefix cache and the budget rarely cuts.
SETTINGS = {"maxDebounceMs": 0, "prefetch": False, "maxLatencyMs": 0}
REQUEST_TIMEOUT_S = 300.0  # cold answers of the 0.5B took up to 71 s while the test suite ran beside it
FIRST_REQUEST_TIMEOUT_S = 15 * 60  # the first request may convert and load the model
SUITE_LIMITS = SandboxLimits(timeout_s=900.0, address_space_bytes=4 * 1024**3)
CHECK_LIMITS = SandboxLimits(timeout_s=120.0, address_space_bytes=4 * 1024**3)
NO_PLUGINS = "os.environ['PYTEST_DISABLE_PLUGIN_AUTOLOAD'] = '1'\n"


@dataclass(frozen=True)
class Library:
    name: str
    version: str
    sha256: str  # of the sdist
    package: str  # the directory of its code, relative to the sdist's root
    tests: str  # the directory of its tests, relative to the sdist's root

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


LIBRARIES = (
    Library("more-itertools", "10.7.0", "9fddd5403be01a94b204faadcff459ec3568cf110265d3c54323e1e866ad29d3", "more_itertools", "tests"),
    Library("toolz", "1.0.0", "2c86e3d9a04798ac556793bced838816296a2f085017664e4995cb40a1047a02", "toolz", "toolz/tests"),
    Library("boltons", "26.2.0", "d39cfd15c1a1c3bd4d705c82252fa9edb8e4f5e8cc039f8e39afac7b1b47e92c", "boltons", "tests"),
)


@dataclass(frozen=True)
class Hole:
    library: str
    path: str  # relative to the library's root
    line: int  # 0-based
    indent: str
    code: str  # the line after its indentation
    tests: tuple[str, ...]  # pytest node ids that run the line, relative to the library's root

    @property
    def key(self) -> str:
        return f"{self.library}/{self.path}:{self.line + 1}"


# --- the libraries --------------------------------------------------------------------------------


def work_dir() -> Path:
    return dirs.cache_dir() / "benchmarks" / "ordinary_holes"


def fetch(library: Library, work: Path) -> Path:
    """The library's unpacked sdist, downloaded and checked against its pinned sha256 once."""
    tree = work / "src" / library.label
    if tree.is_dir():
        return tree
    # PyPI's simple index (PEP 691), as pip reads it: the file is found by its pinned hash.
    index = httpx.get(f"https://pypi.org/simple/{library.name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60, follow_redirects=True)
    index.raise_for_status()
    sdist = next((f for f in index.json()["files"] if f["hashes"].get("sha256") == library.sha256), None)
    if sdist is None:
        raise RuntimeError(f"{library.label}: PyPI lists no file with the pinned sha256 {library.sha256}")
    log(f"{library.label}: downloading {sdist['url']}")
    archive = httpx.get(sdist["url"], timeout=300, follow_redirects=True)
    archive.raise_for_status()
    digest = hashlib.sha256(archive.content).hexdigest()
    if digest != library.sha256:
        raise RuntimeError(f"{library.label}: the sdist's sha256 is {digest}, not the pinned {library.sha256}")
    with tempfile.TemporaryDirectory(dir=work) as unpacking:
        with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
            tar.extractall(unpacking, filter="data")
        (root,) = Path(unpacking).iterdir()
        tree.parent.mkdir(parents=True, exist_ok=True)
        root.rename(tree)  # whole or not at all
    return tree


def pytest_program(tree: Path, arguments: list[str], preamble: str = "") -> str:
    """A program for benchmarks/sandbox.py that runs pytest in `tree`, importing the library from
    it. No bytecode is written: a hole's variants can share a size and an mtime second, and a stale
    .pyc would run the wrong one."""
    return (
        "import os, sys\n"
        "sys.dont_write_bytecode = True\n"
        f"os.chdir({str(tree)!r})\n"
        f"sys.path.insert(0, {str(tree)!r})\n"
        f"{preamble}"
        "import pytest\n"
        f"sys.exit(pytest.main({['-q', '-p', 'no:cacheprovider', '-o', 'addopts=', *arguments]!r}))\n"
    )


def covering_tests(library: Library, tree: Path, work: Path) -> dict[str, dict[int, list[str]]]:
    """For each file of the library, the tests (pytest node ids) that run each of its lines (1-based)."""
    cached = work / f"coverage-{library.label}.json"
    if cached.exists():
        return {path: {int(line): tests for line, tests in lines.items()} for path, lines in json.loads(cached.read_text()).items()}
    import coverage

    data_file = work / f".coverage-{library.label}"
    log(f"{library.label}: running its test suite under coverage, once")
    preamble = f"os.environ['COVERAGE_FILE'] = {str(data_file)!r}\n"
    arguments = [library.tests, f"--cov={library.package}", "--cov-context=test", "--cov-report="]
    result = run_python(pytest_program(tree, arguments, preamble), SUITE_LIMITS)
    if not data_file.exists():
        raise RuntimeError(f"{library.label}: its test suite gave no coverage data (exit {result.returncode}):\n{result.stderr_tail}")
    data = coverage.CoverageData(str(data_file))
    data.read()
    by_file: dict[str, dict[int, list[str]]] = {}
    for measured in data.measured_files():
        path = Path(measured).resolve().relative_to(tree.resolve()).as_posix()
        lines = {}
        for line, contexts in (data.contexts_by_lineno(measured) or {}).items():
            tests = sorted({context.rsplit("|", 1)[0] for context in contexts if context.endswith("|run")})
            if tests:
                lines[line] = tests
        if lines:
            by_file[path] = lines
    cached.write_text(json.dumps(by_file))
    return by_file


def whole_logical_lines(source: str) -> set[int]:
    """The 1-based lines that hold one whole logical line of code: not a docstring or other bare
    string, not part of a statement that spans lines."""
    lines: set[int] = set()
    first: tokenize.TokenInfo | None = None
    skipped = (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in skipped:
            continue
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if first is not None and first.start[0] == token.start[0] and first.type != tokenize.STRING:
                lines.add(first.start[0])
            first = None
        elif first is None:
            first = token
    return lines


def candidate_holes(library: Library, tree: Path, coverage_map: dict[str, dict[int, list[str]]]) -> list[Hole]:
    """Every hole the library offers, in a seeded random order."""
    holes = []
    for path, covered in sorted(coverage_map.items()):
        if not path.startswith(library.package + "/") or path.startswith(library.tests + "/"):
            continue
        text = (tree / path).read_text(encoding="utf-8")
        source_lines = text.split("\n")
        for number in sorted(whole_logical_lines(text) & covered.keys()):
            line = source_lines[number - 1]
            code = line.lstrip()
            tests = covered[number]
            if len(tests) > MAX_TESTS_PER_HOLE:
                tests = sorted(random.Random(f"{SEED}/{path}/{number}").sample(tests, MAX_TESTS_PER_HOLE))
            holes.append(Hole(library.label, path, number - 1, line[: len(line) - len(code)], code.rstrip(), tuple(tests)))
    random.Random(f"{SEED}/{library.label}").shuffle(holes)
    return holes


# --- checking a line ------------------------------------------------------------------------------


def with_line(text: str, line: int, line_text: str) -> str:
    """`text` with its 0-based `line` replaced."""
    lines = text.split("\n")
    lines[line] = line_text
    return "\n".join(lines)


class Checker:
    """Runs a hole's tests with a given text on its line, on a private copy of the library's tree
    (the servers index the original, which must never see a completion)."""

    def __init__(self, trees: dict[str, Path], work: Path):
        self.copies: dict[str, Path] = {}
        for label, tree in trees.items():
            copy = work / "check" / label
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(tree, copy, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
            self.copies[label] = copy

    def run(self, hole: Hole, line_text: str) -> SandboxResult:
        tree = self.copies[hole.library]
        target = tree / hole.path
        original = target.read_text(encoding="utf-8")
        target.write_text(with_line(original, hole.line, line_text), encoding="utf-8")
        try:
            # Without the plugins installed beside pytest (none of the libraries needs one), a run
            # starts in less than half the time: about 1 s a check here, against 2.2 s with them.
            return run_python(pytest_program(tree, ["-x", *hole.tests], NO_PLUGINS), CHECK_LIMITS)
        finally:
            target.write_text(original, encoding="utf-8")


def known_verdicts(verdicts: Path) -> dict[str, bool]:
    """The verdicts of earlier runs, by hole."""
    if not verdicts.exists():
        return {}
    return {row["key"]: row["qualifies"] for row in map(json.loads, verdicts.read_text().splitlines())}


def qualifies(checker: Checker, hole: Hole, verdicts: Path, known: dict[str, bool]) -> bool:
    """Whether the hole's tests pass with its line and fail without it; remembered in `verdicts`
    (and `known`, read from it), so that every model's run, and every rerun, checks only new holes."""
    if hole.key in known:
        return known[hole.key]
    line_kept = checker.run(hole, hole.indent + hole.code)
    line_emptied = checker.run(hole, hole.indent) if line_kept.passed else None
    verdict = line_kept.passed and line_emptied is not None and not line_emptied.passed
    with verdicts.open("a") as out:
        out.write(json.dumps({"key": hole.key, "qualifies": verdict, "passes_with_line": line_kept.passed}) + "\n")
    known[hole.key] = verdict
    return verdict


def select_holes(trees: dict[str, Path], checker: Checker, work: Path, per_library: int) -> list[Hole]:
    holes: list[list[Hole]] = []
    verdicts = work / "verdicts.jsonl"
    known = known_verdicts(verdicts)
    for library in LIBRARIES:
        tree = trees[library.label]
        candidates = candidate_holes(library, tree, covering_tests(library, tree, work))
        chosen: list[Hole] = []
        tried = 0
        for hole in candidates:
            if len(chosen) == per_library:
                break
            tried += 1
            if qualifies(checker, hole, verdicts, known):
                chosen.append(hole)
        log(f"{library.label}: {len(chosen)} holes from {tried} lines tried, of {len(candidates)} executed lines")
        holes.append(chosen)
    # The libraries take turns, so that a run stopped early (see --resume) has as many of each.
    return [hole for turn in itertools.zip_longest(*holes) for hole in turn if hole is not None]


# --- asking the servers ---------------------------------------------------------------------------


class Editor:
    """One `fimble lsp` with the library's tree as its workspace, asking as an editor does."""

    def __init__(self, label: str):
        self.label = label
        self.client: LanguageClient | None = None
        self.status: dict = {}  # the last fimble/status
        self.versions: dict[str, int] = {}
        self.answered_once = False

    async def start(self, settings: dict, env: dict, root: Path) -> None:
        self.client = await start_client(settings, env, root=root, on_status=self.status.update)
        self.client.feature(types.PROGRESS)(lambda params: None)
        self.client.feature(types.WINDOW_SHOW_MESSAGE)(lambda params: log(f"[{self.label}] {params.message}"))

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.shutdown_async(None)
            self.client.exit(None)
            await self.client.stop()

    async def wait_until_indexed(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while self.status.get("index") != "ready":
            if time.monotonic() > deadline or self.status.get("index") == "failed":
                raise RuntimeError(f"{self.label}: the workspace index is {self.status.get('index')!r} after {timeout_s:.0f} s")
            await asyncio.sleep(0.2)

    async def ask(self, uri: str, document: str, position: Position) -> Answer:
        show_document(self.client, self.versions, uri, document)
        params = types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=position.line, character=position.character),
        )
        timeout = REQUEST_TIMEOUT_S if self.answered_once else FIRST_REQUEST_TIMEOUT_S
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(self.client.text_document_inline_completion_async(params), timeout)
        except asyncio.TimeoutError:
            return Answer("", None, None, None, time.perf_counter() - started, error=f"no answer within {timeout:.0f} s")
        self.answered_once = True
        return answers_from_result(result, time.perf_counter() - started)[0]


def completed_line(hole: Hole, document: str, answer: Answer) -> str:
    """The hole's line once the answer's first line is put back."""
    cursor = Position(hole.line, len(hole.indent))
    first_line = answer.insert_text.split("\n", 1)[0]
    return replace_range(document, answer.start or cursor, answer.end or cursor, first_line).split("\n")[hole.line]


def hole_document(tree: Path, hole: Hole) -> str:
    return with_line((tree / hole.path).read_text(encoding="utf-8"), hole.line, hole.indent)


def score(hole: Hole, line: str, answer: Answer, passed: bool) -> dict:
    from rapidfuzz import fuzz  # the [bench] extra's; the rest of this module runs without it

    typed_indent_kept = not answer.insert_text or line[: len(line) - len(line.lstrip())] == hole.indent
    return {
        "completion": line,
        "passed": passed,
        "exact": line.rstrip() == hole.indent + hole.code,
        "edit_similarity": fuzz.ratio(line.strip(), hole.code) / 100,
        "indentation_changed": not typed_indent_kept,
        "latency_s": round(answer.latency_s, 3),
        "error": answer.error,
        "context_files": list(answer.context_files),  # known only when something was shown
    }


def earlier_records(out: Path) -> dict[str, dict]:
    """The records of an earlier run's holes file, by hole, for `--resume`."""
    if not out.exists():
        return {}
    return {record["key"]: record for record in map(json.loads, out.read_text().splitlines())}


def asks_first(number: int) -> str:
    """Which server asks first for the hole numbered `number` (from 1; a resumed run goes on
    counting). They take turns, so that neither always finds the other's work in the daemon's
    cache: the first answer is cold, and the second may find the whole prompt cached."""
    return "with" if number % 2 else "without"


async def run_holes(holes: list[Hole], trees: dict[str, Path], checker: Checker, env: dict, out: Path, resumed: dict[str, dict]) -> list[dict]:
    total = len(holes)
    records = [resumed[hole.key] for hole in holes if hole.key in resumed]
    holes = [hole for hole in holes if hole.key not in resumed]
    if records:
        log(f"{len(records)} holes from the earlier run, {len(holes)} to ask")
    editors: dict[str, dict[str, Editor]] = {}
    try:
        for label, tree in trees.items():
            editors[label] = {}
            for name, tokens in (("with", CONTEXT_ON), ("without", 0)):
                editor = editors[label][name] = Editor(f"{label}, {name} context")
                await editor.start({**SETTINGS, "contextTokens": tokens}, env, tree)
        for pair in editors.values():
            for editor in pair.values():
                await editor.wait_until_indexed()
        with out.open("w") as rows:
            rows.writelines(json.dumps(record) + "\n" for record in records)
            for number, hole in enumerate(holes, len(records) + 1):
                tree = trees[hole.library]
                document = hole_document(tree, hole)
                uri = (tree / hole.path).as_uri()
                record = {**asdict(hole), "key": hole.key}
                checked: dict[str, SandboxResult] = {}
                first = asks_first(number)
                for name in (first, "without" if first == "with" else "with"):
                    answer = await editors[hole.library][name].ask(uri, document, Position(hole.line, len(hole.indent)))
                    line = completed_line(hole, document, answer)
                    if line.strip() and line not in checked:
                        checked[line] = await asyncio.to_thread(checker.run, hole, line)
                    record[name] = score(hole, line, answer, bool(line.strip()) and checked[line].passed)
                records.append(record)
                rows.write(json.dumps(record) + "\n")
                rows.flush()
                if number % 10 == 0 or number == total:
                    log(f"{number}/{total} holes: {summary(records)}")
    finally:
        for pair in editors.values():
            for editor in pair.values():
                await editor.stop()
    return records


# --- results --------------------------------------------------------------------------------------


def summary(records: list[dict]) -> dict:
    n = len(records)

    def rate(name: str, key: str) -> float:
        return round(sum(r[name][key] for r in records) / n, 4)

    return {
        "n": n,
        "pass_with_context": rate("with", "passed"),
        "pass_without_context": rate("without", "passed"),
        "gained": sum(r["with"]["passed"] and not r["without"]["passed"] for r in records),
        "lost": sum(r["without"]["passed"] and not r["with"]["passed"] for r in records),
        "exact_with_context": rate("with", "exact"),
        "exact_without_context": rate("without", "exact"),
        "edit_similarity_with_context": rate("with", "edit_similarity"),
        "edit_similarity_without_context": rate("without", "edit_similarity"),
        "indentation_changed_with_context": sum(r["with"]["indentation_changed"] for r in records),
        "indentation_changed_without_context": sum(r["without"]["indentation_changed"] for r in records),
        "errors": sum(bool(r["with"]["error"]) + bool(r["without"]["error"]) for r in records),
        # Shown answers whose prompt quoted other files (an empty answer does not say).
        "shown_with_context_files": sum(bool(r["with"].get("context_files")) for r in records),
    }


def entry(records: list[dict], source: str, status: dict) -> dict:
    role = status["roles"]["single_line"]
    by_library = {library.label: summary([r for r in records if r["library"] == library.label]) for library in LIBRARIES}
    return {
        "model": role.get("model") or source,
        "source": source,
        **summary(records),
        "p50_cold_latency_with_context_s": cold_latency_p50(records, "with"),
        "p50_cold_latency_without_context_s": cold_latency_p50(records, "without"),
        "by_library": by_library,
        "libraries": [asdict(library) for library in LIBRARIES],
        "settings": {"with": {**SETTINGS, "contextTokens": CONTEXT_ON}, "without": {**SETTINGS, "contextTokens": 0}},
        "seed": SEED,
        "max_tests_per_hole": MAX_TESTS_PER_HOLE,
        "command": " ".join(["python", "benchmarks/ordinary_holes.py", *sys.argv[1:]]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_model(),
    }


def cold_latency_p50(records: list[dict], name: str) -> float:
    """The median latency of a server's answers on the holes where it asked first."""
    return statistics.median(r[name]["latency_s"] for number, r in enumerate(records, 1) if asks_first(number) == name)


def write_entry(new: dict, path: Path) -> None:
    """Replace this model's entry in the results, keeping the other models'."""
    entries = json.loads(path.read_text())["entries"] if path.exists() else []
    entries = [e for e in entries if e["source"] != new["source"]] + [new]
    path.write_text(json.dumps({"entries": entries}, indent=2) + "\n")


async def main_async(args) -> dict:
    work = work_dir()
    work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    trees = {library.label: fetch(library, work) for library in LIBRARIES}
    checker = Checker(trees, work)
    holes = select_holes(trees, checker, work, args.per_library)
    with tempfile.TemporaryDirectory(prefix="fimble-ordinary-holes-") as runtime:
        config = None
        if args.source != "embedded":
            config = Path(runtime) / "config.toml"
            config.write_text(config_text(args.source))
        env = dict(daemon_env(Path(runtime), config), FIMBLE_DAEMON_STANDBY="0")
        os.environ.update(FIMBLE_RUNTIME_DIR=env["FIMBLE_RUNTIME_DIR"], FIMBLE_CONFIG=env["FIMBLE_CONFIG"])  # for DaemonClient
        try:
            holes_file = args.out.with_name(f"ordinary_holes_{args.source}_holes.jsonl")
            resumed = earlier_records(holes_file) if args.resume else {}
            records = await run_holes(holes, trees, checker, env, holes_file, resumed)
            daemon = DaemonClient(autostart=False)
            status = await wait_until_loaded(daemon)
            await daemon.close()
        finally:
            stop_daemon(env)
    return entry(records, args.source, status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="embedded", help='the model for every role, as in the config ("embedded", "embedded-1.5b")')
    parser.add_argument("--per-library", type=int, default=PER_LIBRARY)
    parser.add_argument("--out", type=Path, default=RESULTS / "ordinary_holes.json")
    parser.add_argument("--resume", action="store_true", help="keep the answers of the last run's holes file (same model, same code) and ask only the holes it lacks")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    write_entry(result, args.out)
    log(json.dumps({k: v for k, v in result.items() if k not in ("libraries", "by_library")}, indent=2))


if __name__ == "__main__":
    main()
