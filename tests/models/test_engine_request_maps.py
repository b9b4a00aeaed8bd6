"""Nothing a request leaves behind: after cancels and finishes, every per-request table of the engine
and its scheduler is empty and no page is held (the soak benchmark checks the same in the daemon)."""

from __future__ import annotations

import threading
import time

from fimble.models.engine import Engine
from fimble.models.generation import GenerationRequest, StopRules
from fimble.models.spec import Role
from tests.models.test_engine_exactness import prompt_of


def wait_until_idle(engine: Engine, timeout_s: float = 30) -> dict[str, int]:
    """The request maps once the generation loop has taken in every cancel (it does so between
    forward passes, so a table can lag a cancelled request's result briefly)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sizes = engine.request_maps()
        if not any(sizes.values()) or time.monotonic() > deadline:
            return sizes
        time.sleep(0.02)


def assert_idle_and_clean(engine: Engine) -> None:
    """Every per-request table empty and no page held, once the loop has caught up."""
    assert wait_until_idle(engine) == {key: 0 for key in engine.request_maps()}
    assert engine.cache_usage()["blocks_in_use"] == 0


def test_cancels_and_finishes_leave_no_entry_and_no_page(make_engine):
    engine = make_engine(page_size=16)
    handles = []
    for i in range(24):
        request = GenerationRequest(Role.CHAT if i % 4 == 0 else Role.SINGLE_LINE, 6 + i % 5, tuple(prompt_of(20 + 3 * i, offset=i)))
        handles.append(engine.submit(request))
        if i % 3 == 0:
            handles[-1].cancel()  # most likely before the loop has taken it in
        elif i % 3 == 1 and i > 1:
            handles[-2].cancel()  # a superseded one, often prefilling or decoding by now
    stopped = engine.submit(GenerationRequest(Role.SINGLE_LINE, 20, tuple(prompt_of(31, offset=3)), stop=StopRules(strings=("e",))))
    for handle in [*handles, stopped]:
        handle.result(timeout=60)

    assert_idle_and_clean(engine)


def test_a_cancel_between_intake_and_scheduling_leaves_no_cached_token_count(make_engine):
    """The generation loop takes new requests and cancels in, then clears cancelled requests, then
    schedules. A cancel that arrives between the intake and the scheduling finishes the request in
    the engine before the scheduler writes its cached-token count; the count must not stay behind."""
    engine = make_engine(page_size=16)
    engine.generate(GenerationRequest(Role.SINGLE_LINE, 2, tuple(prompt_of(20))))  # the loop and its scheduler exist
    scheduler = engine.scheduler
    clear = scheduler.clear_cancelled_requests
    cancelled: list[str] = []
    armed = threading.Event()

    def clear_then_cancel_the_new_request():
        cleared = clear()
        if armed.is_set() and scheduler.waiting_requests:
            armed.clear()
            request_id = next(iter(scheduler.waiting_requests))
            cancelled.append(request_id)
            engine.cancel(request_id)  # as the router or a client would, from another thread
        return cleared

    scheduler.clear_cancelled_requests = clear_then_cancel_the_new_request
    armed.set()
    handle = engine.submit(GenerationRequest(Role.SINGLE_LINE, 8, tuple(prompt_of(40, offset=7))))
    assert handle.result(timeout=30).finish_reason == "cancelled"
    assert cancelled == [handle.request_id]

    assert_idle_and_clean(engine)
    assert scheduler.cached_tokens == {}
