"""The engine's state at its edges: eviction while a running request shares cached pages, cancels
of a request still queued or halfway through a chunked prefill, a stop string racing a cancel, and
the order in which a finished prompt's pages are given back. After each, every page is free or
kept for reuse and every per-request table is empty; two negative controls show what the tests
catch when a safeguard is removed.

Where a test must act at an exact point of a request's life (while it decodes, after its first
prefill chunk), it holds the generation loop there (LoopHold) instead of relying on timing."""

from __future__ import annotations

import contextlib
import random
import threading
import time

import pytest
import torch
from transformers.generation.continuous_batching.cache_allocators.cache_allocator import compute_block_hash
from transformers.generation.continuous_batching.requests import RequestStatus

from fimble.models.engine import Engine, RequestHandle
from fimble.models.generation import GenerationRequest, GenerationResult, StopRules
from fimble.models.scheduling import PriorityScheduler
from fimble.models.spec import Role
from tests.models.test_engine_exactness import ATOL, prompt_of, reference_greedy
from tests.models.test_engine_request_maps import assert_idle_and_clean

PAGE = 16
# Every wait is bounded: a deadlock fails the test instead of hanging it.
TIMEOUT_S = 30


def request(role: Role, max_new_tokens: int, prompt: list[int], **kwargs) -> GenerationRequest:
    return GenerationRequest(role, max_new_tokens, tuple(prompt), **kwargs)


def alone_answer(model, prompt: list[int], max_new_tokens: int) -> tuple[tuple[int, ...], list[float]]:
    """The tokens and logprobs the plain model gives this prompt with no cache of any kind, as if the
    request had run alone on a fresh engine. Computed before the engine runs: a forward pass on the
    test's thread beside the generation loop's, on the same model, gives other logits."""
    tokens, logprobs, _ = reference_greedy(model, prompt, max_new_tokens)
    return tokens, logprobs


def assert_answer(result: GenerationResult, expected: tuple[tuple[int, ...], list[float]]) -> None:
    tokens, logprobs = expected
    assert result.finish_reason == "length", result.error
    assert result.token_ids == tokens
    torch.testing.assert_close(torch.tensor(result.logprobs), torch.tensor(logprobs), atol=ATOL, rtol=0)


def generation_loop(engine: Engine):
    """The batch processor of the engine's generation loop, which the loop's thread creates as it starts."""
    deadline = time.monotonic() + TIMEOUT_S
    while engine.manager.batch_processor is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.manager.batch_processor


def decoding(scheduler: PriorityScheduler) -> bool:
    return any(state.status == RequestStatus.DECODING for state in scheduler.active_requests.values())


class LoopHold:
    """Holds the generation loop at the start of the first step where `condition(scheduler)` holds,
    before that step takes in new requests and cancels. Armed when made; `with hold:` waits until the
    loop is held and lets it go on exit, so whatever the block submits or cancels lands in exactly that
    step."""

    def __init__(self, engine: Engine, condition):
        self._reached = threading.Event()
        self._released = threading.Event()
        processor = generation_loop(engine)
        take_in = processor._update_tp_group_state

        def step():
            if not self._reached.is_set() and condition(processor.scheduler):
                self._reached.set()
                self._released.wait(TIMEOUT_S)
            return take_in()

        processor._update_tp_group_state = step

    def __enter__(self) -> LoopHold:
        if not self._reached.wait(TIMEOUT_S):
            self._released.set()
            raise AssertionError("the generation loop never reached the state the test waits for")
        return self

    def __exit__(self, *exc) -> None:
        self._released.set()


class ActiveRequests:
    """Every request id the scheduler ever held as active (scheduled, or given cached prefix pages)."""

    def __init__(self, engine: Engine):
        self.seen: set[str] = set()
        scheduler = generation_loop(engine).scheduler
        schedule = scheduler.schedule_batch

        def recorded(*args, **kwargs):
            outcome = schedule(*args, **kwargs)
            self.seen.update(scheduler.active_requests)
            return outcome

        scheduler.schedule_batch = recorded


@pytest.fixture
def made_results(monkeypatch) -> dict[str, list[GenerationResult]]:
    """Every result each handle made, by request id: a request finishes once whichever thread finishes it."""
    made: dict[str, list[GenerationResult]] = {}
    finish = RequestHandle._finish

    def recorded(handle: RequestHandle, result: GenerationResult) -> None:
        made.setdefault(handle.request_id, []).append(result)
        finish(handle, result)

    monkeypatch.setattr(RequestHandle, "_finish", recorded)
    return made


@pytest.fixture
def late_deltas(monkeypatch) -> list[str]:
    """Every delta pushed to a handle after its result was made: nothing may stream after a result."""
    late: list[str] = []
    push = RequestHandle._push

    def recorded(handle: RequestHandle, delta: str) -> None:
        if delta and handle.done:
            late.append(delta)
        push(handle, delta)

    monkeypatch.setattr(RequestHandle, "_push", recorded)
    return late


# --- eviction while a running request shares cached pages ----------------------------------------


def test_eviction_under_pressure_never_takes_the_pages_a_decoding_request_shares(make_engine, tiny_loaded):
    # 20 pages; the 10% safety margin is 2 free pages, below which cached pages are evicted.
    prefix = prompt_of(4 * PAGE, offset=1)
    sharer_prompt = prefix + [11, 12, 13, 14, 15, 16]
    pressure_prompt = prompt_of(10 * PAGE - 5, offset=150)
    expected_sharer = alone_answer(tiny_loaded.model, sharer_prompt, 40)
    expected_pressure = alone_answer(tiny_loaded.model, pressure_prompt, 2)
    engine = make_engine(page_size=PAGE, cache_tokens=20 * PAGE)
    engine.generate(request(Role.SINGLE_LINE, 2, prefix + [7]))  # the prefix's 4 pages: least recently used
    engine.generate(request(Role.SINGLE_LINE, 2, prompt_of(4 * PAGE, offset=50) + [7]))  # 4 more, evictable
    assert engine.cache_usage()["blocks_cached_for_reuse"] == 8
    scheduler = engine.scheduler
    evictions: list[tuple[bool, set[int]]] = []  # (the sharer was running, pages evicted from its block table)
    sharer_id: list[str] = []
    evict = scheduler._evict_least_recently_used

    def recorded_eviction(blocks_per_allocator: int) -> bool:
        (allocator,) = scheduler.cache.cache_allocators.values()
        before = set(allocator.ledger.cached_blocks)
        evicted_any = evict(blocks_per_allocator)
        evicted = before - set(allocator.ledger.cached_blocks)
        running = bool(sharer_id) and sharer_id[0] in scheduler.active_requests
        evictions.append((running, evicted & set(allocator.block_table.get(sharer_id[0], [])) if running else set()))
        return evicted_any

    scheduler._evict_least_recently_used = recorded_eviction

    # The sharer decodes on the prefix's pages while a 10-page prompt takes the free pages.
    hold = LoopHold(engine, decoding)
    sharer = engine.submit(request(Role.SINGLE_LINE, 40, sharer_prompt))
    sharer_id.append(sharer.request_id)
    with hold:
        pressure = engine.submit(request(Role.MULTI_LINE, 2, pressure_prompt))

    shared_result = sharer.result(timeout=TIMEOUT_S)
    assert shared_result.stats.cached_tokens == 4 * PAGE, "the sharer did not share the prefix's pages"
    assert_answer(shared_result, expected_sharer)
    assert_answer(pressure.result(timeout=TIMEOUT_S), expected_pressure)
    while_sharing = [pages for running, pages in evictions if running]
    assert while_sharing and engine.cache_usage()["blocks_evicted"] >= 4, "no eviction ran while the sharer decoded"
    assert all(not pages for pages in while_sharing), f"evicted the sharer's own pages: {while_sharing}"
    assert_idle_and_clean(engine)


# --- a cancel before the request was ever scheduled ---------------------------------------------


@pytest.mark.parametrize("queued_behind", ["higher_priority_work", "a_full_cache"])
def test_a_request_cancelled_while_queued_finishes_once_and_changes_no_other_answer(
    make_engine, tiny_loaded, made_results, queued_behind
):
    if queued_behind == "higher_priority_work":
        # One request per forward pass: a chat request waits while a single-line one runs.
        engine = make_engine(page_size=PAGE, max_requests_per_batch=1)
        first_prompt, queued_prompt = prompt_of(30, offset=2), prompt_of(40, offset=60)
    else:
        # 10 pages: the first request holds 7 to 9 of them, the queued one needs 4 to start.
        engine = make_engine(page_size=PAGE, cache_tokens=10 * PAGE)
        first_prompt, queued_prompt = prompt_of(100, offset=2), prompt_of(60, offset=60)
    later_prompt = prompt_of(60, offset=120)  # as long as the queued one, so it cannot start before it either
    expected_first = alone_answer(tiny_loaded.model, first_prompt, 30)
    expected_later = alone_answer(tiny_loaded.model, later_prompt, 8)
    active = ActiveRequests(engine)

    hold = LoopHold(engine, decoding)
    first = engine.submit(request(Role.SINGLE_LINE, 30, first_prompt))
    with hold:
        queued = engine.submit(request(Role.CHAT, 8, queued_prompt))
        later = engine.submit(request(Role.CHAT, 8, later_prompt))
    # Held once the queued request was taken in and passed over by at least one scheduling pass.
    with LoopHold(engine, lambda scheduler: queued.request_id in scheduler.waiting_requests):
        assert not first.done
        queued.cancel()

    cancelled = queued.result(timeout=TIMEOUT_S)
    assert cancelled.finish_reason == "cancelled"
    assert cancelled.token_ids == () and cancelled.text == "" and cancelled.stats.ttft_s is None
    assert_answer(first.result(timeout=TIMEOUT_S), expected_first)
    assert_answer(later.result(timeout=TIMEOUT_S), expected_later)
    assert queued.request_id not in active.seen, "the queued request was scheduled before its cancel"
    assert {first.request_id, later.request_id} <= active.seen
    assert [r.finish_reason for r in made_results[queued.request_id]] == ["cancelled"]
    assert_idle_and_clean(engine)


# --- a cancel halfway through a chunked prefill --------------------------------------------------


def test_a_cancel_after_the_first_prefill_chunk_leaves_only_whole_correct_pages(make_engine, tiny_loaded, made_results):
    # 40-token chunks: the first ends 8 tokens into the prompt's third page.
    prompt = prompt_of(300, offset=21)
    expected = alone_answer(tiny_loaded.model, prompt, 8)
    engine = make_engine(page_size=PAGE, max_batch_tokens=40)
    assert generation_loop(engine).max_batch_tokens == 40
    offsets_at_cancel: list[int] = []

    def prefilled_a_chunk(scheduler: PriorityScheduler) -> bool:
        states = [s for s in scheduler.active_requests.values() if s.status == RequestStatus.PREFILLING]
        offsets_at_cancel.extend(s.position_offset for s in states if s.position_offset > 0)
        return bool(offsets_at_cancel)

    hold = LoopHold(engine, prefilled_a_chunk)
    handle = engine.submit(request(Role.CHAT, 8, prompt))
    with hold:
        handle.cancel()

    cancelled = handle.result(timeout=TIMEOUT_S)
    assert offsets_at_cancel == [40], "cancelled at another point than after the first chunk"
    assert cancelled.finish_reason == "cancelled" and cancelled.token_ids == ()
    assert [r.finish_reason for r in made_results[handle.request_id]] == ["cancelled"]
    assert_idle_and_clean(engine)
    # The chunk's two whole pages are kept for reuse; its partly written third page is not.
    assert engine.cache_usage()["blocks_cached_for_reuse"] == 2

    again = engine.generate(request(Role.CHAT, 8, prompt))
    assert again.stats.cached_tokens == 2 * PAGE
    assert_answer(again, expected)
    assert_idle_and_clean(engine)


# --- a stop-string finish racing a client's cancel ------------------------------------------------

# The tiny model's greedy text for this prompt is "(' fibonacciENtC' if)Bimport...": the stop
# string first shows inside its 8th token, " if", after that token's leading space.
STOP_PROMPT = prompt_of(20, offset=21)
STOP = "if"
STOP_TOKEN_COUNT = 8


@pytest.fixture
def stop_text(tiny_loaded) -> str:
    """The text a stop-string request must end with: all the greedy text before the stop string."""
    tokenizer = tiny_loaded.tokenizer
    tokens = list(reference_greedy(tiny_loaded.model, STOP_PROMPT, 12)[0])
    before = tokenizer.decode(tokens[: STOP_TOKEN_COUNT - 1])
    full = tokenizer.decode(tokens)
    # The output that completes the stop string also streams a character before it: a result that
    # missed that output's delta would differ from the streamed text.
    assert STOP not in before and full.index(STOP) > len(before), full
    return full[: full.index(STOP)]


def stop_request() -> GenerationRequest:
    return request(Role.SINGLE_LINE, 12, STOP_PROMPT, stop=StopRules(strings=(STOP,)))


def streamed_and_result(handle: RequestHandle) -> tuple[str, GenerationResult]:
    """All the text the request streamed, then its result."""
    return "".join(handle.stream()), handle.result(timeout=TIMEOUT_S)


def cancel_mid_output(engine: Engine, handle: RequestHandle) -> bool:
    """A client's cancel on its own thread, started while the router applies an output. Returns
    whether, once it had taken the request out of the engine's table, it still waited (on the
    handle's lock) to make the result."""
    canceller = threading.Thread(target=handle.cancel)
    canceller.start()
    deadline = time.monotonic() + TIMEOUT_S
    while handle.request_id in engine._handles and time.monotonic() < deadline:
        time.sleep(0.001)
    canceller.join(timeout=0.2)
    return canceller.is_alive()


def test_a_cancel_landing_while_the_router_applies_the_stop_output_waits_and_keeps_its_delta(
    make_engine, made_results, late_deltas, stop_text, monkeypatch
):
    engine = make_engine(page_size=PAGE)
    cancel_waited: list[bool] = []
    push = RequestHandle._push  # late_deltas' recording _push

    def push_then_cancel(handle: RequestHandle, delta: str) -> None:
        push(handle, delta)
        if len(handle.progress.token_ids) >= STOP_TOKEN_COUNT and not cancel_waited:
            cancel_waited.append(cancel_mid_output(engine, handle))

    monkeypatch.setattr(RequestHandle, "_push", push_then_cancel)
    handle = engine.submit(stop_request())
    streamed, result = streamed_and_result(handle)

    assert cancel_waited == [True], "the cancel did not wait for the router's output"
    assert result.finish_reason == "cancelled"  # it took the request out before the router's finish
    assert streamed == result.text == stop_text
    assert len(made_results[handle.request_id]) == 1
    assert_idle_and_clean(engine)
    assert not late_deltas


def test_a_cancel_landing_while_the_router_finishes_on_the_stop_string_is_a_no_op(
    make_engine, made_results, late_deltas, stop_text, monkeypatch
):
    engine = make_engine(page_size=PAGE)
    cancels_returned: list[bool] = []
    finish = RequestHandle._finish  # made_results' recording _finish

    def cancel_then_finish(handle: RequestHandle, result: GenerationResult) -> None:
        if result.finish_reason == "stop_string":
            # The router has taken the request out of the engine's table and not made its result yet.
            canceller = threading.Thread(target=handle.cancel)
            canceller.start()
            canceller.join(timeout=TIMEOUT_S)
            cancels_returned.append(not canceller.is_alive())
        finish(handle, result)

    monkeypatch.setattr(RequestHandle, "_finish", cancel_then_finish)
    handle = engine.submit(stop_request())
    streamed, result = streamed_and_result(handle)

    assert cancels_returned == [True], "the cancel waited for a result it had no part in"
    assert result.finish_reason == "stop_string"
    assert streamed == result.text == stop_text
    assert len(made_results[handle.request_id]) == 1
    assert_idle_and_clean(engine)
    assert not late_deltas


def measured_step_seconds(engine: Engine) -> float:
    """Seconds per decode step of this engine on this machine, from one warm-up stop request."""
    result = engine.generate(stop_request())
    return 1 / result.stats.decode_tok_s if result.stats.decode_tok_s else 0.005


def test_a_stop_string_racing_a_cancel_makes_one_result_with_every_streamed_delta(
    make_engine, made_results, late_deltas, stop_text
):
    """50 free-running races, the cancel timed around the output that completes the stop string."""
    engine = make_engine(page_size=PAGE)
    rng = random.Random(18)
    step_s = measured_step_seconds(engine)
    outcomes: dict[str, int] = {}
    for _ in range(50):
        handle = engine.submit(stop_request())
        delay_s = rng.uniform(0, 2 * step_s)

        def cancel_near_the_stop(handle=handle, delay_s=delay_s) -> None:
            while len(handle.progress.token_ids) < STOP_TOKEN_COUNT - 1 and not handle.done:
                time.sleep(0.0002)
            time.sleep(delay_s)
            handle.cancel()

        canceller = threading.Thread(target=cancel_near_the_stop)
        canceller.start()
        streamed, result = streamed_and_result(handle)
        canceller.join(timeout=TIMEOUT_S)

        outcomes[result.finish_reason] = outcomes.get(result.finish_reason, 0) + 1
        assert len(made_results[handle.request_id]) == 1
        assert streamed == result.text
        if result.finish_reason == "stop_string":
            assert result.text == stop_text
        else:
            assert result.finish_reason == "cancelled" and stop_text.startswith(result.text)
    assert_idle_and_clean(engine)
    assert not late_deltas, f"deltas streamed after their result: {late_deltas}"
    print(f"stop string vs cancel, 50 races: {outcomes}")


def test_without_the_handle_lock_a_cancel_mid_output_loses_a_streamed_delta(make_engine, stop_text, monkeypatch):
    """Negative control of the tests above: the same race as the first of them, with the handle's lock
    replaced by one that holds nothing, makes a result that misses what was streamed."""
    engine = make_engine(page_size=PAGE)
    cancel_waited: list[bool] = []
    # With nothing held, the result can be made before the router's hook returns.
    hook_returned = threading.Event()
    push = RequestHandle._push
    route = engine._on_output

    def route_without_lock(handle: RequestHandle, output) -> None:
        handle._lock = contextlib.nullcontext()
        route(handle, output)

    def push_then_cancel(handle: RequestHandle, delta: str) -> None:
        push(handle, delta)
        if len(handle.progress.token_ids) >= STOP_TOKEN_COUNT and not cancel_waited:
            cancel_waited.append(cancel_mid_output(engine, handle))
            hook_returned.set()

    engine._on_output = route_without_lock
    monkeypatch.setattr(RequestHandle, "_push", push_then_cancel)
    handle = engine.submit(stop_request())
    streamed, result = streamed_and_result(handle)

    assert hook_returned.wait(TIMEOUT_S) and cancel_waited == [False], "the cancel waited on a lock that holds nothing"
    assert result.finish_reason == "cancelled"
    assert streamed == stop_text
    assert result.text != streamed and streamed.startswith(result.text)


# --- which pages of a finished prompt eviction takes first ----------------------------------------


def cached_pages(engine: Engine, prompt: list[int]) -> list[bool]:
    """For each whole page of the prompt, whether the cache still holds it for reuse."""
    (allocator,) = engine.scheduler.cache.cache_allocators.values()
    held, parent = [], None
    for start in range(0, len(prompt) - PAGE + 1, PAGE):
        parent = compute_block_hash(parent, prompt[start : start + PAGE])
        held.append(parent in allocator.ledger.hash_to_block)
    return held


def evict_a_few_pages_after(engine: Engine, prompt: list[int], pressure_pages: int) -> None:
    """Cache the prompt's 8 pages on a 20-page cache (12 left free), then run a prompt of
    `pressure_pages` pages: 11 push the free pages under the 2-page safety margin, 13 are more than
    are free. Either way the 4 least recently used cached pages are evicted, and no more."""
    engine.generate(request(Role.SINGLE_LINE, 2, prompt))
    assert cached_pages(engine, prompt) == [True] * 8
    pressure = engine.generate(request(Role.MULTI_LINE, 2, prompt_of(pressure_pages * PAGE - 6, offset=100)))
    assert pressure.finish_reason == "length", pressure.error
    assert engine.cache_usage()["blocks_evicted"] == 4


@pytest.mark.parametrize("pressure_pages", [11, 13], ids=["fits_the_free_pages", "needs_more_than_the_free_pages"])
def test_eviction_takes_a_finished_prompts_tail_pages_before_its_head(make_engine, tiny_loaded, pressure_pages):
    prompt = prompt_of(8 * PAGE, offset=3)
    sharer_prompt = prompt + [9]
    expected = alone_answer(tiny_loaded.model, sharer_prompt, 3)
    engine = make_engine(page_size=PAGE, cache_tokens=20 * PAGE)
    evict_a_few_pages_after(engine, prompt, pressure_pages)
    assert cached_pages(engine, prompt) == [True] * 4 + [False] * 4

    sharer = engine.generate(request(Role.SINGLE_LINE, 3, sharer_prompt))
    assert sharer.stats.cached_tokens == 4 * PAGE
    assert_answer(sharer, expected)
    assert_idle_and_clean(engine)


def test_without_tail_first_release_eviction_takes_the_head(make_engine, monkeypatch):
    """Negative control of the test above: pages released in block-table order put the head first in
    the LRU list, so the same pressure evicts the shared prefix and nothing of the prompt is reusable."""
    monkeypatch.setattr(PriorityScheduler, "_release_deepest_blocks_first", lambda self, request_id: None)
    engine = make_engine(page_size=PAGE, cache_tokens=20 * PAGE)
    prompt = prompt_of(8 * PAGE, offset=3)
    evict_a_few_pages_after(engine, prompt, pressure_pages=11)
    assert cached_pages(engine, prompt) == [False] * 4 + [True] * 4
    assert engine.generate(request(Role.SINGLE_LINE, 3, prompt + [9])).stats.cached_tokens == 0


# --- a request that finishes in its prefill's forward pass ----------------------------------------


@pytest.mark.parametrize("finish", ["max_new_tokens_1", "a_stop_token_first"])
def test_a_request_finished_by_its_first_token_leaves_its_prompt_cached(make_engine, tiny_loaded, finish):
    """An editor's completion that stops at once (nothing to insert here) must still leave its prompt
    cached for the next keystroke."""
    prompt = prompt_of(4 * PAGE + 6, offset=5)
    expected = alone_answer(tiny_loaded.model, prompt, 6)
    first_token = expected[0][0]
    engine = make_engine(page_size=PAGE)
    if finish == "max_new_tokens_1":
        first = engine.generate(request(Role.SINGLE_LINE, 1, prompt))
        assert first.finish_reason == "length"
    else:
        first = engine.generate(request(Role.SINGLE_LINE, 6, prompt, stop=StopRules(token_ids=(first_token,))))
        assert first.finish_reason == "stop_token"
    assert first.token_ids == (first_token,)
    assert engine.cache_usage()["blocks_cached_for_reuse"] == 4

    again = engine.generate(request(Role.SINGLE_LINE, 6, prompt))
    assert again.stats.cached_tokens == 4 * PAGE
    assert_answer(again, expected)
    assert_idle_and_clean(engine)
