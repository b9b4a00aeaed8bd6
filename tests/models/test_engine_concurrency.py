"""Several requests at once: each gets its own answer, cancels and priorities behave."""

from __future__ import annotations

import threading

from fimble.models.generation import GenerationRequest, StopRules
from fimble.models.spec import Role
from tests.models.test_engine_exactness import prompt_of, reference_greedy


def test_concurrent_requests_each_get_their_own_answer_and_a_cancel_harms_none(make_engine, tiny_loaded):
    engine = make_engine(page_size=16)
    prompts = [prompt_of(30 + 7 * i, offset=i) for i in range(6)]
    victim = engine.submit(GenerationRequest(Role.CHAT, 400, tuple(prompt_of(40, offset=99))))
    results: dict[int, object] = {}

    def run(i: int) -> None:
        results[i] = engine.generate(GenerationRequest(Role.SINGLE_LINE, 12, tuple(prompts[i])))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    victim.cancel()
    for thread in threads:
        thread.join(timeout=60)

    assert victim.result(timeout=10).finish_reason == "cancelled"
    assert len(victim.result().token_ids) < 400
    for i, prompt in enumerate(prompts):
        tokens, _, _ = reference_greedy(tiny_loaded.model, prompt, 12)
        assert results[i].token_ids == tokens, f"request {i} got another request's tokens"
        assert results[i].finish_reason == "length"


def test_single_line_goes_before_chat(make_engine):
    # One request per forward pass makes the order of service visible in the order of the outputs,
    # which the router sees one by one, as the forward passes made them.
    engine = make_engine(page_size=16, max_requests_per_batch=1)
    served: list[Role] = []
    route = engine._on_output

    def record(handle, output) -> None:
        served.append(handle.request.role)
        route(handle, output)

    engine._on_output = record
    chat = engine.submit(GenerationRequest(Role.CHAT, 300, tuple(prompt_of(60))))
    next(chat.stream())  # the chat is decoding
    single = engine.submit(GenerationRequest(Role.SINGLE_LINE, 5, tuple(prompt_of(20, offset=5))))
    assert single.result(timeout=30).stats.generated_tokens == 5
    chat.cancel()
    first, last = served.index(Role.SINGLE_LINE), len(served) - 1 - served[::-1].index(Role.SINGLE_LINE)
    assert served[first : last + 1] == [Role.SINGLE_LINE] * 5, "a chat step ran while the single-line request waited"


def test_stop_token_and_stop_string(make_engine, tiny_loaded):
    engine = make_engine(page_size=16)
    prompt = prompt_of(33, offset=8)
    tokens, _, _ = reference_greedy(tiny_loaded.model, prompt, 10)
    stop_at_token = engine.generate(GenerationRequest(Role.SINGLE_LINE, 10, tuple(prompt), stop=StopRules(token_ids=(tokens[3],))))
    first = tokens.index(tokens[3])
    assert stop_at_token.finish_reason == "stop_token"
    assert stop_at_token.token_ids == tokens[: first + 1]

    full_text = engine.tokenizer.decode(tokens)
    stop_string = full_text[len(full_text) // 2 : len(full_text) // 2 + 2]
    stopped = engine.generate(GenerationRequest(Role.SINGLE_LINE, 10, tuple(prompt), stop=StopRules(strings=(stop_string,))))
    assert stopped.finish_reason == "stop_string"
    assert stopped.text == full_text[: full_text.index(stop_string)]


def test_streaming_deltas_add_up_to_the_text(make_engine):
    engine = make_engine(page_size=16)
    handle = engine.submit(GenerationRequest(Role.SINGLE_LINE, 15, tuple(prompt_of(25, offset=6))))
    deltas = list(handle.stream())
    result = handle.result(timeout=30)
    assert len(deltas) > 1
    assert "".join(deltas) == result.text
    assert result.stats.ttft_s is not None and result.stats.ttft_s > 0
    assert result.stats.generated_tokens == 15


def test_lru_eviction_keeps_recent_prefixes(make_engine):
    # 20 pages in all, 10% safety margin: a fourth prompt forces eviction of the oldest cached pages.
    engine = make_engine(page_size=16, cache_tokens=20 * 16, max_batch_tokens=512)
    a, b, c = (prompt_of(64, offset=o) for o in (10, 20, 30))
    for prompt in (a, b, c):
        engine.generate(GenerationRequest(Role.SINGLE_LINE, 2, tuple(prompt)))
    engine.generate(GenerationRequest(Role.SINGLE_LINE, 2, tuple(prompt_of(120, offset=40))))
    usage = engine.cache_usage()
    assert usage["blocks_evicted"] == engine.scheduler.evicted_blocks > 0
    assert usage["free_fraction"] >= 0.1  # eviction restored the safety margin
    assert 0 < usage["blocks_cached_for_reuse"] < usage["blocks_total"] == 20
    c_again = engine.generate(GenerationRequest(Role.SINGLE_LINE, 2, tuple(c)))
    a_again = engine.generate(GenerationRequest(Role.SINGLE_LINE, 2, tuple(a)))
    assert c_again.stats.cached_tokens == 48, "the most recent prefix should have survived"
    assert a_again.stats.cached_tokens == 0, "the least recently used prefix should have gone first"


def test_prompt_too_long_is_refused(make_engine):
    engine = make_engine()
    try:
        engine.submit(GenerationRequest(Role.SINGLE_LINE, 64, tuple(prompt_of(2040))))
    except ValueError as error:
        assert "context length 2048" in str(error)
    else:
        raise AssertionError("a prompt over the context length was accepted")


def test_an_error_in_the_forward_pass_fails_the_request_and_the_engine_recovers(make_engine, tiny_loaded):
    engine = make_engine(page_size=16)
    prompt = prompt_of(30, offset=11)

    def out_of_memory(module, args):
        raise RuntimeError("simulated out of memory in the forward pass")

    hook = tiny_loaded.model.get_output_embeddings().register_forward_pre_hook(out_of_memory)
    try:
        failed = engine.submit(GenerationRequest(Role.SINGLE_LINE, 5, tuple(prompt))).result(timeout=30)
    finally:
        hook.remove()
    assert failed.finish_reason == "error"
    assert "simulated out of memory" in failed.error

    recovered = engine.generate(GenerationRequest(Role.SINGLE_LINE, 5, tuple(prompt)))
    tokens, _, _ = reference_greedy(tiny_loaded.model, prompt, 5)
    assert recovered.finish_reason == "length"
    assert recovered.token_ids == tokens
    assert engine.restarts == 1


def test_a_multi_character_stop_string_is_never_streamed(make_engine, tiny_loaded):
    engine = make_engine(page_size=16)
    prompt = prompt_of(29, offset=12)
    tokens, _, _ = reference_greedy(tiny_loaded.model, prompt, 12)
    full_text = engine.tokenizer.decode(tokens)
    cut = len(full_text) // 2
    stop_string = full_text[cut : cut + 3]
    handle = engine.submit(GenerationRequest(Role.SINGLE_LINE, 12, tuple(prompt), stop=StopRules(strings=(stop_string,))))
    streamed = "".join(handle.stream())
    result = handle.result(timeout=30)
    assert result.finish_reason == "stop_string"
    assert streamed == result.text == full_text[: full_text.index(stop_string)]


def test_stop_strings_after_text_skip_leading_whitespace():
    from fimble.models.stopping import first_stop

    assert first_stop("\n\n    return x\n    y", StopRules(strings=("\n",))) == 0
    assert first_stop("\n\n    return x\n    y", StopRules(strings=("\n",), after_text=True)) == len("\n\n    return x")
    assert first_stop("\n  \n", StopRules(strings=("\n",), after_text=True)) is None  # nothing but whitespace yet


def test_a_cancel_racing_an_output_waits_for_it_so_the_result_holds_every_streamed_delta(make_engine):
    """The cancel lands just after the router streamed a delta and before it recorded it: the
    result must still hold that delta, and nothing may stream after the result."""
    engine = make_engine(page_size=16)
    handle = engine.submit(GenerationRequest(Role.CHAT, 200, tuple(prompt_of(30, offset=3))))
    stream = handle.stream()
    streamed = [next(stream)]  # decoding
    push = handle._push
    raced = threading.Event()

    def push_then_cancel(delta: str) -> None:
        push(delta)
        if delta and not raced.is_set():
            raced.set()
            canceller = threading.Thread(target=handle.cancel)
            canceller.start()
            canceller.join(timeout=0.5)  # with the handle's lock held by the router, it waits

    handle._push = push_then_cancel
    streamed.extend(stream)
    result = handle.result(timeout=30)
    assert raced.is_set() and result.finish_reason == "cancelled"
    assert "".join(streamed) == result.text
