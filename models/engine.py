"""The engine: one loaded model behind transformers' continuous batching, with our priority
scheduler, a paged prefix KV cache, stop rules, cancellation, streaming and per-request stats.

    Engine.submit(GenerationRequest) -> ContinuousBatchingManager (background thread: schedule ->
        forward -> sample) -> Engine._route_outputs (router thread: stop rules, models/stopping.py)
        -> RequestHandle.stream() / .result() -> GenerationResult

Requests and results are the generation contract's types (models/generation.py).

Candidates: a request that wants several answers has its first step's top-k recorded
(models/first_tokens.py). When its first token arrives, each next-best first token becomes a branch:
a request of its own for the prompt plus that token, continued greedily, whose first pages come from
the prefix cache. The request's handle finishes once its branches have, with their results as its
`alternatives`; a branch still writing well after the request has finished is dropped
(`branch_token_limit`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from fimble.models.first_tokens import FirstTokenChoices
from fimble.models.generation import FinishReason, GenerationRequest, GenerationResult, GenerationStats, TokenChoice
from fimble.models.loading import LoadedModel
from fimble.models.scheduling import SCHEDULER_NAME, PriorityScheduler, priority_for, request_id_for
from fimble.models.stopping import first_stop, streamable_length

log = logging.getLogger(__name__)


class PromptTooLongError(ValueError):
    """The prompt plus max_new_tokens does not fit the model's context; shorten the prompt budget."""


class RequestExceedsCacheError(PromptTooLongError):
    """The prompt plus max_new_tokens needs more pages than the whole KV cache holds, so it could
    never be scheduled; shorten the prompt or lower the model's context_length."""


class EngineClosedError(RuntimeError):
    """The engine was shut down; requests need a new one."""


# What torch's allocators say when memory runs out: CUDA and MPS ("... out of memory"), the CPU
# allocator ("can't allocate memory").
_OUT_OF_MEMORY_MARKS = ("out of memory", "can't allocate memory")
# transformers' generation loop ends with this when the KV cache cannot hold even one request.
_CACHE_FULL_MARK = "No requests can be scheduled"


def describe_loop_error(message: str) -> str:
    """The message for a request that failed inside the generation loop: the library's own text,
    with what to do next where the cause is one a user can act on."""
    lowered = message.lower()
    if any(mark in lowered for mark in _OUT_OF_MEMORY_MARKS):
        return (
            f"the model ran out of memory ({message}). The requests running were stopped and the next one starts "
            "afresh; retry with a shorter context (fewer attachments or chat turns) or fewer requests at once, or "
            "choose a smaller model or quantization in config.toml"
        )
    if _CACHE_FULL_MARK in message:
        return (
            f"the KV cache could not hold the requests running ({message}); retry with a shorter context, or lower "
            "the model's context_length in config.toml"
        )
    return message


# Once a request has finished after n tokens, each of its branches still writing may go on to
# branch_token_limit(n) tokens, then it is dropped: the request's answer waits for its branches, and
# an alternative many times longer than the first answer is rarely the line the user wants.
# benchmarks/candidates.py (104 HumanEval single-line tasks): without the limit, 3 candidates took
# 11.7 s p90 against 1.5 s for one, with branches writing to the 48-token cap; with it, 2.6 s, and
# some candidate passed in as many tasks.
BRANCH_LENGTH_FACTOR = 2
BRANCH_SLACK_TOKENS = 8


def branch_token_limit(finished_tokens: int) -> int:
    """The tokens a branch may reach, its first included, once its request finished with
    `finished_tokens`."""
    return max(BRANCH_LENGTH_FACTOR * finished_tokens, finished_tokens + BRANCH_SLACK_TOKENS)


@dataclass(frozen=True)
class EngineConfig:
    # 16-token pages: a keystroke invalidates the KV from the edit onwards, and the cache is shared
    # by whole pages, so at most page_size - 1 unchanged tokens are recomputed per request.
    # benchmarks/page_size.py, warm keystroke TTFT p50: 0.59 s at 16, 0.77 s at 64, 0.96 s at 256
    # (transformers' default).
    page_size: int = 16
    # KV capacity in tokens (the 0.5B model: 12 KB per token in bf16, 24 KB in fp32; 16k tokens in
    # bf16 is ~200 MB).
    cache_tokens: int = 16384
    # Prefill chunk: bounds how long a long chat prompt can hold back a keystroke's request.
    max_batch_tokens: int = 512
    max_requests_per_batch: int = 16
    prefix_cache: bool = True


@dataclass
class _Progress:
    """What the router has seen of one request so far."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    first_token_at: float | None = None
    last_token_at: float | None = None


class RequestHandle:
    """A submitted request: stream its text, wait for its result, or cancel it."""

    def __init__(self, engine: Engine, request_id: str, request: GenerationRequest, branch_point: TokenChoice | None = None):
        self.request_id = request_id
        self.request = request
        self._engine = engine
        # A branch (candidates): its first token was chosen, and is the prompt's last one.
        self.branch_point = branch_point
        self.branches: list[RequestHandle] = []
        self.parent: RequestHandle | None = None
        self.dropped = False  # a branch past branch_token_limit: not among the alternatives
        self._own_result: GenerationResult | None = None  # finished, its branches maybe not yet
        self._deltas: queue.Queue[str | None] = queue.Queue()
        self._done = threading.Event()
        # Held while the router applies an output and while the request is finished, whichever
        # thread finishes it (the router, a caller's cancel, a failing loop): the result is made
        # once, after every delta it holds was streamed, and no delta follows it.
        self._lock = threading.RLock()
        self._result: GenerationResult | None = None
        self.submitted_at = time.perf_counter()
        self.progress = _Progress()

    def stream(self) -> Iterator[str]:
        """Yield text as it is generated; ends when the request finishes for any reason."""
        while (delta := self._deltas.get()) is not None:
            yield delta

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish in {timeout} s")
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop it, and its branches (which may run on after it finished)."""
        self._engine.cancel(self.request_id)
        for branch in list(self.branches):
            branch.cancel()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _push(self, delta: str) -> None:
        if delta:
            self._deltas.put(delta)

    def _finish(self, result: GenerationResult) -> None:
        self._result = result
        self._done.set()
        self._deltas.put(None)


class Engine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig = EngineConfig()):
        self.loaded = loaded
        self.config = config
        self.tokenizer = loaded.tokenizer
        self._serial = itertools.count()
        self._handles: dict[str, RequestHandle] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self.first_tokens = FirstTokenChoices()
        self.manager = self._start_manager()
        self._router = threading.Thread(target=self._route_outputs, name="fimble-router", daemon=True)
        self._router.start()

    def _start_manager(self):
        config = self.config
        manager = self.loaded.model.init_continuous_batching(
            generation_config=GenerationConfig(do_sample=False, max_new_tokens=64, eos_token_id=-1),
            continuous_batching_config=ContinuousBatchingConfig(
                page_size=config.page_size,
                num_blocks=max(1, config.cache_tokens // config.page_size),
                max_batch_tokens=config.max_batch_tokens,
                max_requests_per_batch=config.max_requests_per_batch,
                allow_block_sharing=config.prefix_cache,
                scheduler_type=SCHEDULER_NAME,
                return_logprobs=True,
                use_cuda_graph=False,
            ),
        )
        self.first_tokens.install(manager.logit_processor)
        # The manager's loop thread copies the caller's inference mode; start it inside one.
        with torch.inference_mode():
            manager.start()
        return manager

    def _ensure_running(self) -> None:
        """An error inside a forward pass (out of memory, say) ends transformers' generation loop and
        fails the requests in flight. The engine itself recovers: the next request starts a fresh
        loop, with an empty cache."""
        if self._closed:
            raise EngineClosedError("the engine was shut down")
        with self._lock:
            stopped = self.manager
            status = stopped.background_thread_status
            # A loop that recorded its error may still be winding down; it already refuses requests.
            if stopped.is_running() and status.can_accept_new_requests() is None:
                return
            log.warning("the generation loop had stopped (%s); starting a new one", status.fatal_error)
            # stop() joins the dead loop and drops its cache (gc + empty_cache), so a GPU that just ran
            # out of memory has the old cache's memory back before the new cache is allocated.
            stopped.stop(block=True, timeout=30)
            orphans = list(self._handles)
            self.manager = self._start_manager()
            self.restarts += 1
        # The router may not have read the stopped loop's last outputs before it moved to the new
        # loop; those requests fail here, so none waits on a loop that is gone.
        message = describe_loop_error(str(status.fatal_error or "the generation loop stopped"))
        for request_id in orphans:
            self._finish(request_id, "error", error=message)

    # --- public API -------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        self._ensure_running()
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        if len(request.prompt_ids) + request.max_new_tokens > self.loaded.spec.context_length:
            raise PromptTooLongError(
                f"prompt of {len(request.prompt_ids)} tokens + {request.max_new_tokens} new tokens exceeds the "
                f"context length {self.loaded.spec.context_length}"
            )
        if len(request.prompt_ids) + request.max_new_tokens > self.cache_capacity_tokens:
            raise RequestExceedsCacheError(
                f"prompt of {len(request.prompt_ids)} tokens + {request.max_new_tokens} new tokens is more than the KV "
                f"cache's {self.cache_capacity_tokens} tokens; shorten the prompt, or lower the model's context_length "
                "in config.toml so prompts are budgeted to fit"
            )
        return self._add(request)

    def _add(self, request: GenerationRequest, branch_point: TokenChoice | None = None) -> RequestHandle:
        request_id = request_id_for(priority_for(request), next(self._serial))
        handle = RequestHandle(self, request_id, request, branch_point)
        with self._lock:
            self._handles[request_id] = handle
        if request.candidates > 1:
            self.first_tokens.want(request_id, request.candidates)
        self.manager.add_request(
            list(request.prompt_ids),
            request_id=request_id,
            max_new_tokens=request.max_new_tokens,
            streaming=True,
            eos_token_id=list(request.stop.token_ids) or -1,
        )
        return handle

    def _start_branches(self, parent: RequestHandle) -> None:
        """At the parent's first token: a branch for each next-best first token, up to the
        candidates asked for. A token that ends the answer at once (a stop token, or a stop string
        within it) would be an empty answer, so it gets none."""
        request = parent.request
        choices = self.first_tokens.take(parent.request_id)
        if request.max_new_tokens < 2:
            return
        first = parent.progress.token_ids[0]
        others = [choice for choice in choices if choice.token_id != first][: request.candidates - 1]
        for choice in others:
            if choice.token_id in request.stop.token_ids or first_stop(_decode_stable(self.tokenizer, [choice.token_id]), request.stop) is not None:
                continue
            branch = self._add(
                dataclasses.replace(request, prompt_ids=request.prompt_ids + (choice.token_id,), max_new_tokens=request.max_new_tokens - 1, candidates=1),
                branch_point=choice,
            )
            branch.parent = parent
            parent.branches.append(branch)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self.submit(request).result()

    def cancel(self, request_id: str) -> None:
        """Stop a request now: the caller gets its result at once, and the scheduler frees its blocks
        before the next forward pass. Finishing first takes the request's cached-token count before
        the scheduler, seeing the cancel, drops it."""
        self._finish(request_id, "cancelled")
        self.manager.cancel_request(request_id)

    @property
    def cache_capacity_tokens(self) -> int:
        """Tokens the KV cache holds in all: one request may use at most this many."""
        return max(1, self.config.cache_tokens // self.config.page_size) * self.config.page_size

    @property
    def active_requests(self) -> int:
        """Requests submitted and not yet finished (cancelled ones finish at once)."""
        return len(self._handles)

    @property
    def scheduler(self) -> PriorityScheduler | None:
        processor = self.manager.batch_processor
        return processor.scheduler if processor is not None else None

    def cache_usage(self) -> dict[str, float]:
        """The KV cache's size, how much of it is free, and how many pages are kept only for reuse."""
        processor = self.manager.batch_processor
        if processor is None:
            return {}
        cache = processor.cache
        scheduler = self.scheduler
        free_fraction = cache.compute_free_capacity()
        cached_for_reuse = sum(len(a.ledger.cached_blocks) for a in cache.cache_allocators.values())
        return {
            "blocks_total": cache.num_blocks,
            "free_fraction": free_fraction,
            "blocks_cached_for_reuse": cached_for_reuse,
            # Neither free nor kept for reuse: held by running requests, so 0 when idle.
            "blocks_in_use": cache.num_blocks - round(free_fraction * cache.num_blocks) - cached_for_reuse,
            "blocks_evicted": scheduler.evicted_blocks if scheduler is not None else 0,
            "page_size": self.config.page_size,
        }

    def request_maps(self) -> dict[str, int]:
        """The size of every per-request table of the engine and its scheduler; all are 0 when no
        request runs, so a table that is not shows a leak."""
        sizes = {"handles": len(self._handles), "first_tokens": len(self.first_tokens)}
        scheduler = self.scheduler
        if scheduler is not None:
            sizes.update(
                cached_tokens=len(scheduler.cached_tokens),
                active=len(scheduler.active_requests),
                waiting=len(scheduler.waiting_requests),
                waiting_order=len(scheduler.waiting_requests_order),
                block_tables=sum(len(a.block_table) for a in scheduler.cache.cache_allocators.values()),
            )
        return sizes

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for request_id in list(self._handles):
            self.cancel(request_id)
        self.manager.stop(block=True, timeout=30)
        self._router.join(timeout=5)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- output routing (router thread) ----------------------------------------------------------

    def _route_outputs(self) -> None:
        while not self._closed:
            manager = self.manager
            output = manager.get_result(timeout=0.05)
            if output is None:
                status = manager.background_thread_status
                if not manager.is_running() or status.fatal_error is not None:
                    if not manager.is_running() and manager is self.manager and self._handles and not self._closed:
                        self._fail_all(describe_loop_error(f"the generation loop stopped: {status.fatal_error}"))
                    # get_result returns at once from a stopped loop: wait here rather than spin a core
                    # until the next request restarts it.
                    time.sleep(0.05)
                continue
            with self._lock:
                handle = self._handles.get(output.request_id)
            if handle is not None:
                self._on_output(handle, output)

    def _on_output(self, handle: RequestHandle, output) -> None:
        with handle._lock:
            if handle._own_result is None:
                self._apply_output(handle, output)

    def _apply_output(self, handle: RequestHandle, output) -> None:
        now = time.perf_counter()
        progress = handle.progress
        if output.error is not None:
            self._finish(handle.request_id, "error", error=describe_loop_error(str(output.error)))
            return
        point = handle.branch_point
        generated = ([point.token_id] if point else []) + list(output.generated_tokens)
        first_tokens_now = not progress.token_ids and bool(generated)
        new_ids = generated[len(progress.token_ids) :]
        if new_ids:
            progress.first_token_at = progress.first_token_at or now
            progress.last_token_at = now
        progress.token_ids = generated
        progress.logprobs = ([point.logprob] if point else []) + list(output.logprobs)
        if handle.request.candidates > 1 and first_tokens_now:
            self._start_branches(handle)
        rules = handle.request.stop
        visible_ids = [t for t in progress.token_ids if t not in rules.token_ids]
        text = _decode_stable(self.tokenizer, visible_ids)
        # progress.text is what has been streamed so far; it only grows.
        stop_at = first_stop(text, rules)
        if stop_at is not None:
            handle._push(text[len(progress.text) : stop_at])
            progress.text = text[:stop_at]
            self._finish(handle.request_id, "stop_string")  # before the cancel, as in cancel()
            self.manager.cancel_request(handle.request_id)
        elif output.is_finished():
            final_text = _decode_stable(self.tokenizer, visible_ids, final=True)
            handle._push(final_text[len(progress.text) :])
            progress.text = final_text
            last = progress.token_ids[-1] if progress.token_ids else None
            self._finish(handle.request_id, "stop_token" if last in rules.token_ids else "length")
        elif self._outran_its_request(handle):
            handle.dropped = True
            self.cancel(handle.request_id)
        else:
            streamable = text[: streamable_length(text, rules)]
            handle._push(streamable[len(progress.text) :])
            progress.text = streamable

    @staticmethod
    def _outran_its_request(handle: RequestHandle) -> bool:
        """A branch still writing at branch_token_limit of its finished request's tokens."""
        parent = handle.parent
        finished = parent._own_result if parent is not None else None
        return finished is not None and len(handle.progress.token_ids) >= branch_token_limit(len(finished.token_ids))

    def _finish(self, request_id: str, reason: FinishReason, error: str | None = None) -> None:
        with self._lock:
            handle = self._handles.pop(request_id, None)
        if handle is None:
            return
        self.first_tokens.take(request_id)
        scheduler = self.scheduler
        cached = scheduler.cached_tokens.pop(request_id, 0) if scheduler is not None else 0
        with handle._lock:
            handle._own_result = GenerationResult(
                text=handle.progress.text,
                finish_reason=reason,
                stats=_stats(handle, cached),
                token_ids=tuple(handle.progress.token_ids),
                logprobs=tuple(handle.progress.logprobs),
                error=error,
            )
            branches = list(handle.branches)
        if reason in ("cancelled", "error"):  # nobody waits for its other answers either
            for branch in branches:
                self.cancel(branch.request_id)
        self._complete(handle)
        if handle.parent is not None:
            self._complete(handle.parent)

    def _complete(self, handle: RequestHandle) -> None:
        """Give the handle its result once it and all its branches have finished."""
        with handle._lock:
            if handle.done or handle._own_result is None or not all(branch.done for branch in handle.branches):
                return
            alternatives = tuple(branch.result() for branch in handle.branches if not branch.dropped)
            handle._finish(dataclasses.replace(handle._own_result, alternatives=alternatives))

    def _fail_all(self, message: str) -> None:
        log.error("engine failure: %s", message)
        for request_id in list(self._handles):
            self._finish(request_id, "error", error=message)


def _stats(handle: RequestHandle, cached_tokens: int) -> GenerationStats:
    p = handle.progress
    generated = len(p.token_ids)
    decode_tok_s = None
    if generated > 1 and p.first_token_at and p.last_token_at and p.last_token_at > p.first_token_at:
        decode_tok_s = (generated - 1) / (p.last_token_at - p.first_token_at)
    return GenerationStats(
        prompt_tokens=len(handle.request.prompt_ids),
        cached_tokens=cached_tokens,
        generated_tokens=generated,
        ttft_s=(p.first_token_at - handle.submitted_at) if p.first_token_at else None,
        decode_tok_s=decode_tok_s,
        total_s=time.perf_counter() - handle.submitted_at,
    )


def _decode_stable(tokenizer, token_ids: list[int], final: bool = False) -> str:
    """Decode, holding back a trailing partial UTF-8 character until its remaining bytes arrive."""
    text = tokenizer.decode(token_ids, skip_special_tokens=False)
    if not final:
        text = text.rstrip("\ufffd")
    return text
