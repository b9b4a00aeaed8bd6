"""HumanEval infilling through the full LSP path: completion quality as an editor gets it.

    python benchmarks/humaneval_infill.py                      # all 1,033 single-line + 100 multi-line tasks
    python benchmarks/humaneval_infill.py --every 100 --skip-multi-line --out /tmp/he_smoke.json   # ~11 tasks

It starts the real server (`fimble lsp`, stdio) with pygls's client and, per task, sends the document
with the hole emptied (full-text didChange, one URI per problem), asks `textDocument/inlineCompletion`
at column 0 of the empty line, applies the first item and runs the problem's tests in a sandbox
(`benchmarks/sandbox.py`). Tasks are built as in Bavarian et al. 2022 (`benchmarks/humaneval_tasks.py`).

- Single-line tasks trigger `Automatic` (as typing would) and only the first line of the inserted
  text is scored: the paper cut samples at the first newline too.
- Multi-line tasks trigger `Invoked` (an explicit request) and the whole inserted text is scored.
- The server runs with `abstainBelowLogprob: None` (never abstain) and no debounce; each item's
  `fimble.accepted` command carries the completion's mean token logprob, so one run gives the whole
  abstain trade-off (`abstain_tradeoff`): which share would be shown, and how many of those pass, if
  the server abstained below each threshold. An empty answer counts as a failed task.

Writes `benchmarks/results/humaneval_infill.json` (summary) and `humaneval_infill_tasks.jsonl`
(one record per task) next to it; the server's stderr goes to `humaneval_infill_server.log`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.humaneval_tasks import MULTI_LINE_SEED, InfillTask, check_program, load_problems, sample_multi_line_tasks, single_line_tasks  # noqa: E402
from benchmarks.lsp_text import Position, replace_range  # noqa: E402
from benchmarks.sandbox import SandboxLimits, SandboxResult, run_python  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
INITIALIZATION_OPTIONS = {"abstainBelowLogprob": None, "maxDebounceMs": 0}


def initialization_options(settings: Settings) -> dict:
    """The server's options: never abstain, no debounce, and the latency budget if one is given
    (None keeps the server's default, as users get it; 0 turns it off to score the model alone)."""
    budget = {} if settings.max_latency_ms is None else {"maxLatencyMs": settings.max_latency_ms}
    return {**INITIALIZATION_OPTIONS, **budget, **settings.server_options}
ABSTAIN_THRESHOLDS: list[float | None] = [None, -0.1, -0.2, -0.3, -0.5, -0.75, -1.0, -1.5, -2.0]
FIRST_REQUEST_TIMEOUT_S = 15 * 60  # the first request may convert and load the model
REQUEST_TIMEOUT_S = 120.0
PROGRESS_EVERY = 20


@dataclass(frozen=True)
class Settings:
    every: int
    limit: int | None
    skip_single_line: bool
    skip_multi_line: bool
    multi_line_n: int
    multi_line_seed: int
    out: Path
    check_timeout_s: float
    first_request_timeout_s: float
    request_timeout_s: float
    model_label: str | None
    server: list[str]  # the LSP server's command line
    max_latency_ms: int | None = None
    server_options: dict = field(default_factory=dict)  # more initializationOptions (benchmarks/candidates.py)


@dataclass(frozen=True)
class Answer:
    """The first inline completion item of one request, or why there was none."""

    insert_text: str  # "" when the server abstained or produced nothing
    start: Position | None  # the item's range; None means insert at the cursor
    end: Position | None
    mean_logprob: float | None
    latency_s: float
    error: str | None = None  # a timeout or an error response
    context_files: tuple[str, ...] = ()  # the other files quoted in the prompt (the item's details)


@dataclass
class TaskRecord:
    task_id: str
    kind: str
    hole_lines: list[int]  # first and last removed line, 0-based within the canonical solution
    cursor_line: int  # 0-based line of the hole in the document
    truth: str
    completion: str  # the text that was scored (single-line: the first line of the item)
    passed: bool
    latency_s: float
    mean_logprob: float | None
    error: str | None = None
    timed_out: bool = False
    stderr_tail: str = ""


# --- Applying an answer ---------------------------------------------------------------------------


def scored_text(task: InfillTask, answer: Answer) -> str:
    if task.kind == "single_line":
        return answer.insert_text.split("\n", 1)[0]
    return answer.insert_text


def apply_answer(task: InfillTask, answer: Answer) -> str:
    cursor = Position(task.cursor_line, 0)
    return replace_range(task.document, answer.start or cursor, answer.end or cursor, scored_text(task, answer))


def answers_from_result(result: Any, latency_s: float) -> list[Answer]:
    """Every item of an inlineCompletion result, in order; one empty Answer when there is none."""
    items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
    if not items:
        return [Answer("", None, None, None, latency_s)]
    answers = []
    for item in items:
        text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
        start = end = None
        if item.range is not None:
            start = Position(item.range.start.line, item.range.start.character)
            end = Position(item.range.end.line, item.range.end.character)
        answers.append(Answer(text, start, end, mean_logprob_of(item.command), latency_s, context_files=context_files_of(item.command)))
    return answers


def accepted_detail(command: types.Command | None, key: str):
    """One of the details the server attaches to an item (lsp_server/acceptance.py), or None."""
    if command is None or command.command != "fimble.accepted" or not command.arguments:
        return None
    details = command.arguments[0]
    return details.get(key) if isinstance(details, dict) else getattr(details, key, None)


def context_files_of(command: types.Command | None) -> tuple[str, ...]:
    return tuple(accepted_detail(command, "contextFiles") or ())


def mean_logprob_of(command: types.Command | None) -> float | None:
    value = accepted_detail(command, "meanLogprob")
    return float(value) if isinstance(value, (int, float)) else None


# --- The LSP session ------------------------------------------------------------------------------


class FimbleSession:
    """One `fimble lsp` process, driven like an editor: one open document per HumanEval problem."""

    def __init__(self, server_log: Path, settings: Settings):
        self.client = LanguageClient("fimble-humaneval", "0.1")
        self.server_log = server_log
        self.settings = settings
        self.versions: dict[str, int] = {}
        self.answered_once = False
        self._stderr_task: asyncio.Task | None = None
        self._register_server_requests()

    def _register_server_requests(self) -> None:
        # Requests a server may send; an unanswered one could stall it.
        @self.client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def create_progress(params: types.WorkDoneProgressCreateParams) -> None:
            return None

        @self.client.feature(types.WORKSPACE_CONFIGURATION)
        def configuration(params: types.ConfigurationParams) -> list[None]:
            return [None for _ in params.items]

        @self.client.feature(types.PROGRESS)
        def progress(params: types.ProgressParams) -> None:
            message = getattr(params.value, "message", None) or getattr(params.value, "title", None)
            if message:
                log(f"[server progress] {message}")

        @self.client.feature(types.WINDOW_SHOW_MESSAGE)
        def show_message(params: types.ShowMessageParams) -> None:
            log(f"[server] {params.message}")

        @self.client.feature(types.WINDOW_LOG_MESSAGE)
        def log_message(params: types.LogMessageParams) -> None:
            if params.type in (types.MessageType.Error, types.MessageType.Warning):
                log(f"[server log] {params.message}")

    async def start(self) -> None:
        await self.client.start_io(*self.settings.server, env=dict(os.environ))
        # pygls pipes the server's stderr but never reads it; a full pipe would block the server.
        self._stderr_task = asyncio.create_task(self._drain_stderr(self.client._server.stderr))
        await self.client.initialize_async(
            types.InitializeParams(
                process_id=os.getpid(),
                capabilities=types.ClientCapabilities(
                    text_document=types.TextDocumentClientCapabilities(
                        inline_completion=types.InlineCompletionClientCapabilities()
                    ),
                    window=types.WindowClientCapabilities(work_done_progress=True),
                ),
                client_info=types.ClientInfo(name="fimble-humaneval"),
                initialization_options=initialization_options(self.settings),
            )
        )
        self.client.initialized(types.InitializedParams())

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        with open(self.server_log, "ab") as log_file:
            while line := await stream.readline():
                log_file.write(line)
                log_file.flush()
                if not self.answered_once:  # loading progress is worth seeing; per-request noise is not
                    log(f"[server stderr] {line.decode('utf-8', 'replace').rstrip()}")

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), timeout=30)
            self.client.exit(None)
            await asyncio.wait_for(self.client.stop(), timeout=30)
        except (asyncio.TimeoutError, RuntimeError) as error:
            log(f"the server did not shut down cleanly ({error!r}); killing it")
            if self.client._server and self.client._server.returncode is None:
                self.client._server.kill()
        if self._stderr_task:
            self._stderr_task.cancel()

    def show(self, task: InfillTask) -> str:
        """Open the problem's document, or replace its whole text; returns the URI."""
        uri = f"file:///humaneval/HumanEval_{task.problem.number}.py"
        show_document(self.client, self.versions, uri, task.document)
        return uri

    async def complete(self, task: InfillTask) -> Answer:
        return (await self.complete_all(task))[0]

    async def complete_all(self, task: InfillTask) -> list[Answer]:
        """Every item the server offers for the task (one empty Answer when it offers none)."""
        uri = self.show(task)
        trigger = types.InlineCompletionTriggerKind.Automatic if task.kind == "single_line" else types.InlineCompletionTriggerKind.Invoked
        params = types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=trigger),
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=task.cursor_line, character=0),
        )
        timeout = self.settings.request_timeout_s if self.answered_once else self.settings.first_request_timeout_s
        request_id = str(uuid.uuid4())
        started = time.perf_counter()
        request = asyncio.wrap_future(
            self.client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=request_id)
        )
        try:
            result = await asyncio.wait_for(request, timeout=timeout)
        except asyncio.TimeoutError:
            self.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=request_id))
            return [Answer("", None, None, None, time.perf_counter() - started, error=f"no answer within {timeout:.0f} s")]
        except Exception as error:  # an error response; the server keeps running
            if self.client.stopped:
                raise RuntimeError(f"the server exited; see {self.server_log}") from error
            return [Answer("", None, None, None, time.perf_counter() - started, error=repr(error))]
        self.answered_once = True
        return answers_from_result(result, time.perf_counter() - started)


def show_document(client: LanguageClient, versions: dict[str, int], uri: str, text: str) -> None:
    """Open a Python document in the server, or, once open, replace its whole text; `versions`
    holds each URI's last version."""
    version = versions.get(uri, 0) + 1
    versions[uri] = version
    if version == 1:
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri=uri, language_id="python", version=version, text=text))
        )
    else:
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(version=version, uri=uri),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
            )
        )


def fimble_command() -> list[str]:
    executable = shutil.which("fimble")
    return [executable] if executable else [sys.executable, "-m", "fimble"]


# --- Running a task set ---------------------------------------------------------------------------


def check(task: InfillTask, answer: Answer, limits: SandboxLimits) -> TaskRecord:
    completion = scored_text(task, answer)
    if answer.error or not completion.strip():
        result = SandboxResult(False, None, False, 0.0, "")
    else:
        result = run_python(check_program(task.problem, apply_answer(task, answer)), limits)
    return TaskRecord(
        task_id=task.task_id,
        kind=task.kind,
        hole_lines=[task.first_hole_line, task.last_hole_line],
        cursor_line=task.cursor_line,
        truth=task.truth,
        completion=completion,
        passed=result.passed,
        latency_s=round(answer.latency_s, 4),
        mean_logprob=answer.mean_logprob,
        error=answer.error,
        timed_out=result.timed_out,
        stderr_tail="" if result.passed else result.stderr_tail,
    )


@dataclass
class Progress:
    label: str
    total: int
    started: float = field(default_factory=time.perf_counter)
    checks: list[Future] = field(default_factory=list)

    def report(self, done: int) -> None:
        finished = [future.result() for future in self.checks if future.done()]
        passed = sum(record.passed for record in finished)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total - done)
        rate = f"{passed / len(finished):.1%} of {len(finished)} checked" if finished else "none checked yet"
        log(f"{self.label}: {done}/{self.total}, pass {rate}, elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min")


async def run_tasks(session: FimbleSession, tasks: list[InfillTask], label: str, checker: ThreadPoolExecutor, limits: SandboxLimits) -> list[TaskRecord]:
    """Ask for every task in order; the sandboxed checks run meanwhile in the checker's one thread."""
    progress = Progress(label, len(tasks))
    for done, task in enumerate(tasks, start=1):
        answer = await session.complete(task)
        progress.checks.append(checker.submit(check, task, answer, limits))
        if done % PROGRESS_EVERY == 0 or done == len(tasks):
            progress.report(done)
    return list(await asyncio.gather(*(asyncio.wrap_future(check) for check in progress.checks)))


# --- Summaries ------------------------------------------------------------------------------------


def pass_rate(records: list[TaskRecord]) -> float | None:
    return round(sum(r.passed for r in records) / len(records), 4) if records else None


def p50_latency(records: list[TaskRecord]) -> float | None:
    answered = [r.latency_s for r in records if r.error is None]
    return round(statistics.median(answered), 4) if answered else None


def abstain_tradeoff(records: list[TaskRecord], thresholds: list[float | None] = ABSTAIN_THRESHOLDS) -> list[dict]:
    """What abstaining below each mean-logprob threshold would have given.

    A completion is shown when it is non-empty and its mean logprob is at or above the threshold
    (None: no threshold). Without a reported logprob a completion is shown only with no threshold.
    """
    rows = []
    for threshold in thresholds:
        shown = [
            r for r in records
            if r.completion.strip() and (threshold is None or (r.mean_logprob is not None and r.mean_logprob >= threshold))
        ]
        passed = sum(r.passed for r in shown)
        rows.append({
            "threshold": threshold,
            "shown_fraction": round(len(shown) / len(records), 4) if records else None,
            "precision": round(passed / len(shown), 4) if shown else None,
            "pass_at_1": round(passed / len(records), 4) if records else None,
        })
    return rows


def model_and_quantization(label: str | None) -> tuple[str, str]:
    """The single_line role's model and the quantization the server will use, resolved from the
    config the way the server resolves it. (`fimble models` prints the unresolved "auto" label.)"""
    from fimble.models.config import load_role_config
    from fimble.models.embedded import EMBEDDED_MODELS
    from fimble.models.loading import ModelLoadError, resolve_device, resolve_quantization
    from fimble.models.spec import Role

    spec = load_role_config().spec_for(Role.SINGLE_LINE)
    model = EMBEDDED_MODELS[spec.source].name if spec.source in EMBEDDED_MODELS else spec.source
    try:
        device = resolve_device(spec)
        quantization = f"{resolve_quantization(spec, device)} on {device.type}"
    except ModelLoadError as error:
        quantization = f"unresolved ({error})"
    return label or model, quantization


def summary(single: list[TaskRecord], multi: list[TaskRecord], settings: Settings, model: str, quantization: str) -> dict:
    return {
        "single_line_pass_at_1": pass_rate(single),
        "single_line_n": len(single),
        "multi_line_pass_at_1": pass_rate(multi),
        "multi_line_n": len(multi),
        "p50_latency_s": p50_latency(single),
        "multi_line_p50_latency_s": p50_latency(multi),
        "model": model,
        "quantization": quantization,
        "abstain_tradeoff": abstain_tradeoff(single),
        "single_line_empty_fraction": round(sum(not r.completion.strip() for r in single) / len(single), 4) if single else None,
        "request_errors": sum(r.error is not None for r in single + multi),
        "settings": {
            **{key: str(value) if isinstance(value, Path) else value for key, value in asdict(settings).items()},
            "initialization_options": initialization_options(settings),
            "single_line_trigger": "Automatic, first line of the item scored",
            "multi_line_trigger": "Invoked, whole item scored",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d"),
        },
    }


# --- Main -----------------------------------------------------------------------------------------


def select_tasks(settings: Settings) -> tuple[list[InfillTask], list[InfillTask]]:
    problems = load_problems()
    single = [] if settings.skip_single_line else single_line_tasks(problems)[:: settings.every][: settings.limit]
    multi = [] if settings.skip_multi_line else sample_multi_line_tasks(problems, settings.multi_line_n, settings.multi_line_seed)[: settings.limit]
    return single, multi


async def run_benchmark(settings: Settings) -> tuple[list[TaskRecord], list[TaskRecord]]:
    single_tasks, multi_tasks = select_tasks(settings)
    limits = SandboxLimits(timeout_s=settings.check_timeout_s)
    session = FimbleSession(settings.out.with_name(settings.out.stem + "_server.log"), settings)
    log(f"{len(single_tasks)} single-line and {len(multi_tasks)} multi-line tasks; server: {shlex.join(settings.server)}")
    await session.start()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox") as checker:
            single = await run_tasks(session, single_tasks, "single-line", checker, limits)
            multi = await run_tasks(session, multi_tasks, "multi-line", checker, limits)
    finally:
        await session.stop()
    return single, multi


def write_results(single: list[TaskRecord], multi: list[TaskRecord], settings: Settings) -> dict:
    model, quantization = model_and_quantization(settings.model_label)
    result = summary(single, multi, settings, model, quantization)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(result, indent=2) + "\n")
    with open(settings.out.with_name(settings.out.stem + "_tasks.jsonl"), "w") as records_file:
        for record in single + multi:
            records_file.write(json.dumps(asdict(record)) + "\n")
    if single:
        plot_abstain_tradeoff(result, settings.out.with_suffix(".png"))
    return result


def plot_abstain_tradeoff(result: dict, path: Path) -> None:
    """Share of single-line suggestions shown against their precision, one point per threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A threshold that shows nothing has no precision: it is not a point.
    rows = sorted((r for r in result["abstain_tradeoff"] if r["precision"] is not None), key=lambda r: r["shown_fraction"])
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([r["shown_fraction"] for r in rows], [r["precision"] for r in rows], marker="o")
    labelled: set[float] = set()
    for row in rows:  # thresholds that show the same tasks share one point and one label
        if row["shown_fraction"] in labelled:
            continue
        labelled.add(row["shown_fraction"])
        label = "never abstain" if row["threshold"] is None else f"< {row['threshold']}"
        axis.annotate(label, (row["shown_fraction"], row["precision"]), textcoords="offset points", xytext=(-10, 6), fontsize=8, ha="right")
    axis.set_xlabel("share of single-line tasks with a suggestion shown")
    axis.set_ylabel("precision (shown suggestions that pass)")
    axis.set_title(f"Abstaining below a mean token logprob (HumanEval single-line, n={result['single_line_n']})", fontsize=10)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=1, help="take every K-th single-line task (quick runs)")
    parser.add_argument("--limit", type=int, default=None, help="at most N tasks of each set")
    parser.add_argument("--skip-single-line", action="store_true")
    parser.add_argument("--skip-multi-line", action="store_true")
    parser.add_argument("--multi-line-n", type=int, default=100, help="size of the seeded multi-line sample")
    parser.add_argument("--multi-line-seed", type=int, default=MULTI_LINE_SEED)
    parser.add_argument("--out", type=Path, default=RESULTS / "humaneval_infill.json", help="summary JSON; the task records go beside it")
    parser.add_argument("--check-timeout", type=float, default=10.0, help="seconds a task's tests may run")
    parser.add_argument("--first-request-timeout", type=float, default=FIRST_REQUEST_TIMEOUT_S)
    parser.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S)
    parser.add_argument("--model-label", default=None, help="the model name to record (default: from `fimble models`)")
    parser.add_argument("--server", default=None, help="the LSP server's command line (default: fimble lsp)")
    parser.add_argument("--max-latency-ms", type=int, default=None, help="the latency budget (default: the server's; 0: none)")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be 1 or more")
    return Settings(
        every=args.every, limit=args.limit, skip_single_line=args.skip_single_line, skip_multi_line=args.skip_multi_line, multi_line_n=args.multi_line_n,
        multi_line_seed=args.multi_line_seed, out=args.out, check_timeout_s=args.check_timeout,
        first_request_timeout_s=args.first_request_timeout, request_timeout_s=args.request_timeout,
        model_label=args.model_label, server=shlex.split(args.server) if args.server else [*fimble_command(), "lsp"],
        max_latency_ms=args.max_latency_ms,
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    single, multi = asyncio.run(run_benchmark(settings))
    result = write_results(single, multi, settings)
    print(json.dumps({key: value for key, value in result.items() if key not in ("settings", "abstain_tradeoff")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
