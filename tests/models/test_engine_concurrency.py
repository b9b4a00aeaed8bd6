"""Several requests at once: each gets its own answer, cancels and priorities behave."""

from __future__ import annotations

import threading

from fimble.models.engine import GenerationRequest
from fimble.models.spec import Role
from tests.models.test_engine_exactness import prompt_of, reference_greedy


def test_concurrent_requests_each_get_their_own_answer_and_a_cancel_harms_none(make_engine, tiny_loaded):
    engine = make_engine(page_size=16)
    prompts = [prompt_of(30 + 7 * i, offset=i) for i in range(6)]
    victim = engine.submit(GenerationRequest(prompt_of(40, offset=99), max_new_tokens=400, role=Role.CHAT))
    results: dict[int, object] = {}

    def run(i: int) -> None:
        results[i] = engine.generate(GenerationRequest(prompts[i], max_new_tokens=12))

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
    chat = engine.submit(GenerationRequest(prompt_of(60), max_new_tokens=300, role=Role.CHAT))
    next(chat.stream())  # the chat is decoding
    single = engine.submit(GenerationRequest(prompt_of(20, offset=5), max_new_tokens=5, role=Role.SINGLE_LINE))
    assert single.result(timeout=30).stats.generated_tokens == 5
    chat.cancel()
    first, last = served.index(Role.SINGLE_LINE), len(served) - 1 - served[::-1].index(Role.SINGLE_LINE)
    assert served[first : last + 1] == [Role.SINGLE_LINE] * 5, "a chat step ran while the single-line request waited"


def test_stop_token_and_stop_string(make_engine, tiny_loaded):
    engine = make_engine(page_size=16)
    prompt = prompt_of(33, offset=8)
    tokens, _, _ = reference_greedy(tiny_loaded.model, prompt, 10)
    stop_at_token = engine.generate(GenerationRequest(prompt, max_new_tokens=10, stop_token_ids=(tokens[3],)))
    first = tokens.index(tokens[3])
    assert stop_at_token.finish_reason == "stop_token"
    assert stop_at_token.token_ids == tokens[: first + 1]

    full_text = engine.tokenizer.decode(tokens)
    stop_string = full_text[len(full_text) // 2 : len(full_text) // 2 + 2]
    stopped = engine.generate(GenerationRequest(prompt, max_new_tokens=10, stop_strings=(stop_string,)))
    assert stopped.finish_reason == "stop_string"
    assert stopped.text == full_text[: full_text.index(stop_string)]


def test_streaming_deltas_add_up_to_the_text(make_engine):
    engine = make_engine(page_size=16)
    handle = engine.submit(GenerationRequest(prompt_of(25, offset=6), max_new_tokens=15))
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
        engine.generate(GenerationRequest(prompt, max_new_tokens=2))
    engine.generate(GenerationRequest(prompt_of(120, offset=40), max_new_tokens=2))
    usage = engine.cache_usage()
    assert usage["blocks_evicted"] == engine.scheduler.evicted_blocks > 0
    assert usage["free_fraction"] >= 0.1  # eviction restored the safety margin
    assert 0 < usage["blocks_cached_for_reuse"] < usage["blocks_total"] == 20
    c_again = engine.generate(GenerationRequest(c, max_new_tokens=2))
    a_again = engine.generate(GenerationRequest(a, max_new_tokens=2))
    assert c_again.stats.cached_tokens == 48, "the most recent prefix should have survived"
    assert a_again.stats.cached_tokens == 0, "the least recently used prefix should have gone first"


def test_prompt_too_long_is_refused(make_engine):
    engine = make_engine()
    try:
        engine.submit(GenerationRequest(prompt_of(2040), max_new_tokens=64))
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
        failed = engine.submit(GenerationRequest(prompt, max_new_tokens=5)).result(timeout=30)
    finally:
        hook.remove()
    assert failed.finish_reason == "error"
    assert "simulated out of memory" in failed.error

    recovered = engine.generate(GenerationRequest(prompt, max_new_tokens=5))
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
    handle = engine.submit(GenerationRequest(prompt, max_new_tokens=12, stop_strings=(stop_string,)))
    streamed = "".join(handle.stream())
    result = handle.result(timeout=30)
    assert result.finish_reason == "stop_string"
    assert streamed == result.text == full_text[: full_text.index(stop_string)]


def test_stop_strings_after_text_skip_leading_whitespace():
    from fimble.models.engine import _first_stop

    assert _first_stop("\n\n    return x\n    y", ("\n",)) == 0
    assert _first_stop("\n\n    return x\n    y", ("\n",), after_text=True) == len("\n\n    return x")
    assert _first_stop("\n  \n", ("\n",), after_text=True) is None  # nothing but whitespace yet
