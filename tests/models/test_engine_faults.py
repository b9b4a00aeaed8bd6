"""Faults inside the engine: a forward pass that runs out of memory, and a KV cache too small for
the requests sent. Requests fail with a message that says what to do, or wait; nothing hangs, every
page is free afterwards, and the next request is served as if nothing had happened."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

from fimble.models.engine import RequestExceedsCacheError
from fimble.models.generation import GenerationRequest
from fimble.models.spec import Role
from tests.models.test_engine_exactness import prompt_of, reference_greedy

# Every wait in these tests is bounded: a deadlock fails the test instead of hanging it.
RESULT_TIMEOUT_S = 60


class OutOfMemoryOnCall:
    """A forward pre-hook on the output head that raises torch's out-of-memory error on its Nth
    call, as a CUDA allocation that fails inside a forward pass does."""

    def __init__(self, model, call: int):
        self.calls = 0
        self.call = call
        self._hook = model.get_output_embeddings().register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1
        if self.calls == self.call:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    def remove(self) -> None:
        self._hook.remove()


def loop_cache(engine):
    """The KV cache of the engine's generation loop, which its thread creates as it starts."""
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while engine.manager.batch_processor is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.manager.batch_processor.cache


def blocks_held(cache) -> int:
    """Pages a cache's block tables still give to requests."""
    return sum(len(table) for allocator in cache.cache_allocators.values() for table in allocator.block_table.values())


def test_out_of_memory_fails_the_requests_in_flight_with_advice_and_the_next_is_served(make_engine, tiny_loaded):
    engine = make_engine(page_size=16)
    old_cache = loop_cache(engine)
    # Four requests decode together; the third forward pass runs out of memory.
    fault = OutOfMemoryOnCall(tiny_loaded.model, call=3)
    try:
        handles = [engine.submit(GenerationRequest(Role.SINGLE_LINE, 40, tuple(prompt_of(30 + i, offset=i)))) for i in range(4)]
        results = [handle.result(timeout=RESULT_TIMEOUT_S) for handle in handles]
    finally:
        fault.remove()

    for result in results:
        assert result.finish_reason == "error"
        assert "out of memory" in result.error
        assert "shorter context" in result.error and "fewer requests" in result.error
        assert len(result.token_ids) < 40
    assert blocks_held(old_cache) == 0, "the failed loop kept pages of the requests it failed"

    prompt = prompt_of(30, offset=11)
    recovered = engine.generate(GenerationRequest(Role.SINGLE_LINE, 5, tuple(prompt)))
    assert recovered.finish_reason == "length"
    assert recovered.token_ids == reference_greedy(tiny_loaded.model, prompt, 5)[0]
    assert engine.restarts == 1
    assert engine.cache_usage()["blocks_in_use"] == 0
    assert engine.active_requests == 0


def test_a_dead_loop_does_not_spin_the_router(make_engine, tiny_loaded):
    engine = make_engine(page_size=16)
    fault = OutOfMemoryOnCall(tiny_loaded.model, call=1)
    try:
        failed = engine.submit(GenerationRequest(Role.SINGLE_LINE, 5, tuple(prompt_of(20)))).result(timeout=RESULT_TIMEOUT_S)
    finally:
        fault.remove()
    assert failed.finish_reason == "error"
    dead = engine.manager
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while dead.is_running() and time.monotonic() < deadline:
        time.sleep(0.01)

    polls = 0
    get_result = dead.get_result

    def counted(*args, **kwargs):
        nonlocal polls
        polls += 1
        return get_result(*args, **kwargs)

    dead.get_result = counted
    time.sleep(0.5)
    # A dead loop's get_result returns at once; the router waits 50 ms between polls instead
    # of spinning a core until the next request comes.
    assert 0 < polls <= 20, f"the router polled a dead loop {polls} times in 0.5 s"


def test_requests_the_router_had_not_failed_when_the_loop_restarted_fail_too(make_engine, tiny_loaded):
    """The loop dies and a new request restarts it before the router has read the dead loop's last
    outputs: the requests of the dead loop must not wait forever on a loop that is gone."""
    engine = make_engine(page_size=16)
    router_busy, release_router = threading.Event(), threading.Event()
    route = engine._on_output

    def slow_router(handle, output) -> None:
        if output.error is not None and not router_busy.is_set():
            router_busy.set()
            release_router.wait(RESULT_TIMEOUT_S)
        route(handle, output)

    engine._on_output = slow_router
    fault = OutOfMemoryOnCall(tiny_loaded.model, call=1)
    try:
        handles = [engine.submit(GenerationRequest(Role.SINGLE_LINE, 20, tuple(prompt_of(25, offset=i)))) for i in range(3)]
        assert router_busy.wait(RESULT_TIMEOUT_S)
    finally:
        fault.remove()
    dead = engine.manager
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while dead.is_running() and time.monotonic() < deadline:
        time.sleep(0.01)

    prompt = prompt_of(30, offset=7)
    next_one = engine.submit(GenerationRequest(Role.SINGLE_LINE, 5, tuple(prompt)))  # restarts the loop
    release_router.set()

    for handle in handles:
        result = handle.result(timeout=RESULT_TIMEOUT_S)
        assert result.finish_reason == "error" and "out of memory" in result.error
    served = next_one.result(timeout=RESULT_TIMEOUT_S)
    assert served.finish_reason == "length"
    assert served.token_ids == reference_greedy(tiny_loaded.model, prompt, 5)[0]
    assert engine.restarts == 1


# --- a KV cache too small for the load ---------------------------------------------------------

PAGES = 8  # 128 tokens of KV in all


def test_many_long_concurrent_prompts_on_a_small_cache_all_complete_and_free_every_page(make_engine, tiny_loaded):
    engine = make_engine(page_size=16, cache_tokens=PAGES * 16, max_batch_tokens=64)
    capacity = engine.cache_capacity_tokens
    assert capacity == PAGES * 16
    rng = random.Random(3)
    roles = [Role.SINGLE_LINE, Role.MULTI_LINE, Role.CHAT]
    requests = []
    for i in range(16):
        total = rng.randint(capacity // 2, capacity)  # each fits alone; together they need ~10x the cache
        new_tokens = rng.randint(1, total // 2)
        offset = 0 if i % 3 == 0 else i  # a third share one prefix
        requests.append(GenerationRequest(rng.choice(roles), new_tokens, tuple(prompt_of(total - new_tokens, offset=offset))))

    handles = [engine.submit(request) for request in requests]
    results = [handle.result(timeout=RESULT_TIMEOUT_S) for handle in handles]

    # They waited for pages (requests that starve are sent back and prefilled again) and each got
    # exactly its own greedy answer.
    for request, result in zip(requests, results):
        assert result.finish_reason == "length", result.error
        assert result.token_ids == reference_greedy(tiny_loaded.model, list(request.prompt_ids), request.max_new_tokens)[0]
    assert engine.restarts == 0
    usage = engine.cache_usage()
    assert usage["blocks_in_use"] == 0
    assert blocks_held(loop_cache(engine)) == 0
    assert engine.active_requests == 0


def test_a_request_larger_than_the_whole_cache_is_refused_and_harms_none_in_flight(make_engine, tiny_loaded):
    engine = make_engine(page_size=16, cache_tokens=PAGES * 16, max_batch_tokens=64)
    running = [engine.submit(GenerationRequest(Role.SINGLE_LINE, 30, tuple(prompt_of(60, offset=i)))) for i in range(3)]

    with pytest.raises(RequestExceedsCacheError) as refused:
        engine.submit(GenerationRequest(Role.CHAT, 40, tuple(prompt_of(100, offset=50))))
    message = str(refused.value)
    assert "KV cache's 128 tokens" in message and "shorten the prompt" in message

    for handle in running:
        result = handle.result(timeout=RESULT_TIMEOUT_S)
        assert result.finish_reason == "length" and len(result.token_ids) == 30
    assert engine.restarts == 0, "the refused request reached the generation loop and stopped it"
    assert engine.cache_usage()["blocks_in_use"] == 0
    # Exactly the whole cache still fits.
    assert engine.generate(GenerationRequest(Role.SINGLE_LINE, 28, tuple(prompt_of(100, offset=51)))).finish_reason == "length"
