"""Cached and uncached logits must match: the engine's prefix cache against the plain model; and
requests decoding together must get, bit for bit, what each gets alone."""

from __future__ import annotations

import torch

from fimble.models import int8
from fimble.models.engine import Engine, EngineConfig
from fimble.models.generation import GenerationRequest
from fimble.models.loading import load_model
from fimble.models.spec import ModelSpec, Role
from tests.waiting import wait_for

ATOL = 1e-4
PAGE = 16


def reference_greedy(model, prompt: list[int], steps: int) -> tuple[list[int], list[float], torch.Tensor]:
    """Greedy decoding by recomputing the whole sequence every step: no cache of any kind.
    Returns tokens, their logprobs, and the logits of the prompt's last token."""
    ids = list(prompt)
    logprobs = []
    first_logits = None
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1].float()
            first_logits = logits if first_logits is None else first_logits
            token = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            ids.append(token)
    return tuple(ids[len(prompt) :]), logprobs, first_logits


def capture_first_logits(engine, request: GenerationRequest) -> tuple[torch.Tensor, object]:
    """Run one request alone and return the logits the engine computed for its first new token."""
    seen: list[torch.Tensor] = []
    head = engine.loaded.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: seen.append(out[0, 0].detach().float().clone()))
    try:
        result = engine.generate(request)
    finally:
        hook.remove()
    return seen[0], result


def prompt_of(length: int, offset: int = 0) -> list[int]:
    return [(7 * i + offset) % 300 + 5 for i in range(length)]


def test_cache_hit_matches_uncached_logits_and_tokens(make_engine, tiny_loaded):
    engine = make_engine(page_size=PAGE)
    base = prompt_of(80)
    engine.generate(GenerationRequest(Role.SINGLE_LINE, 4, tuple(base + [11])))  # warms the cache with base's pages
    prompt = base + [12, 13]
    logits, result = capture_first_logits(engine, GenerationRequest(Role.SINGLE_LINE, 12, tuple(prompt)))
    tokens, logprobs, ref_logits = reference_greedy(tiny_loaded.model, prompt, 12)
    assert result.stats.cached_tokens == 80  # five whole pages of the shared prefix
    assert result.token_ids == tokens
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.tensor(result.logprobs), torch.tensor(logprobs), atol=ATOL, rtol=0)


def test_fully_cached_prompt_of_exact_page_multiple(make_engine, tiny_loaded):
    """nano-vllm #144: a prompt whose pages are all cached and whose length is a page multiple left
    nothing to prefill. The engine must recompute the last page and give the same logits."""
    engine = make_engine(page_size=PAGE)
    prompt = prompt_of(4 * PAGE, offset=3)
    first = engine.generate(GenerationRequest(Role.SINGLE_LINE, 6, tuple(prompt)))
    logits, second = capture_first_logits(engine, GenerationRequest(Role.SINGLE_LINE, 6, tuple(prompt)))
    tokens, _, ref_logits = reference_greedy(tiny_loaded.model, prompt, 6)
    assert first.stats.cached_tokens == 0
    assert second.stats.cached_tokens == 3 * PAGE
    assert first.token_ids == second.token_ids == tokens
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)


def test_two_requests_sharing_a_prefix_in_one_batch(make_engine, tiny_loaded):
    engine = make_engine(page_size=PAGE)
    shared = prompt_of(3 * PAGE + 5, offset=1)
    prompts = [shared + [20, 21, 22], shared + [30, 31]]
    handles = [engine.submit(GenerationRequest(Role.SINGLE_LINE, 10, tuple(p))) for p in prompts]
    results = [h.result(timeout=60) for h in handles]
    for prompt, result in zip(prompts, results):
        tokens, logprobs, _ = reference_greedy(tiny_loaded.model, prompt, 10)
        assert result.token_ids == tokens
        torch.testing.assert_close(torch.tensor(result.logprobs), torch.tensor(logprobs), atol=ATOL, rtol=0)


def test_cancelled_request_blocks_are_reused(make_engine, tiny_loaded):
    # 12 pages in all: a leaked block would starve the later requests.
    engine = make_engine(page_size=PAGE, cache_tokens=12 * PAGE, max_batch_tokens=256)
    prompt = prompt_of(5 * PAGE + 3, offset=2)
    for _ in range(4):
        handle = engine.submit(GenerationRequest(Role.CHAT, 3 * PAGE, tuple(prompt)))
        for _ in handle.stream():
            handle.cancel()  # after the first token
        assert handle.result(timeout=30).finish_reason == "cancelled"
    # Each cancel is done once its pages are back: free, or kept for reuse, none held by a request.
    assert wait_for(lambda: no_page_is_held(engine))
    follow_up = prompt + [40, 41]
    logits, result = capture_first_logits(engine, GenerationRequest(Role.SINGLE_LINE, 8, tuple(follow_up)))
    tokens, _, ref_logits = reference_greedy(tiny_loaded.model, follow_up, 8)
    assert result.stats.cached_tokens == 5 * PAGE  # the cancelled request's pages, reused
    assert result.token_ids == tokens
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)


def test_cache_off_gives_the_same_answer(make_engine, tiny_loaded):
    engine = make_engine(page_size=PAGE, prefix_cache=False)
    prompt = prompt_of(50, offset=4)
    first = engine.generate(GenerationRequest(Role.SINGLE_LINE, 8, tuple(prompt)))
    second = engine.generate(GenerationRequest(Role.SINGLE_LINE, 8, tuple(prompt)))
    tokens, _, _ = reference_greedy(tiny_loaded.model, prompt, 8)
    assert first.token_ids == second.token_ids == tokens
    assert second.stats.cached_tokens == 0


def no_page_is_held(engine) -> bool:
    usage = engine.cache_usage()
    return round(usage["free_fraction"] * usage["blocks_total"]) + usage["blocks_cached_for_reuse"] == usage["blocks_total"]


def tiny_int8_model(tiny_checkpoint, tmp_path, monkeypatch):
    """The tiny checkpoint on the CPU default: bf16, int8 weight-only, its quantized copy in tmp_path."""
    monkeypatch.setenv("FIMBLE_CACHE_DIR", str(tmp_path / "cache"))
    return load_model(ModelSpec(source=str(tiny_checkpoint), quantization="int8-weight-only", device="cpu", threads=1))


def test_requests_decoding_together_get_exactly_what_each_gets_alone(tiny_checkpoint, tmp_path, monkeypatch):
    """On the CPU default (bf16, int8 weights), from the same cache state: the int8 kernel computes
    each row on its own, so a batch of decoding requests changes no bit of any one's answer."""
    loaded = tiny_int8_model(tiny_checkpoint, tmp_path, monkeypatch)
    shared = prompt_of(3 * PAGE, offset=5)
    requests = [GenerationRequest(Role.SINGLE_LINE, 16, tuple(shared + [40 + i, 50 + i])) for i in range(4)]
    with Engine(loaded, EngineConfig(page_size=PAGE)) as engine:
        for request in requests:
            engine.generate(request)  # every prompt's whole pages cached: each run below recomputes 2 tokens
        alone = [engine.generate(request) for request in requests]
        together = [handle.result(timeout=60) for handle in [engine.submit(request) for request in requests]]
        for a, b in zip(alone, together):
            assert a.stats.cached_tokens == b.stats.cached_tokens == 3 * PAGE
            assert (a.token_ids, a.logprobs) == (b.token_ids, b.logprobs)
        # Negative control: with batches on the bf16 copy of the weights, a batch does change bits.
        monkeypatch.setattr(int8, "INT8_KERNEL_MAX_ROWS", 1)
        bf16_batch = [handle.result(timeout=60) for handle in [engine.submit(request) for request in requests]]
        assert [r.logprobs for r in bf16_batch] != [r.logprobs for r in alone]


def test_requests_decoding_beside_a_prefill_get_exactly_what_each_gets_alone(tiny_checkpoint, tmp_path, monkeypatch):
    """A step that holds another request's prefill as well: the decoding requests' rows still take
    the int8 kernel, as they would alone, and the prefill's rows the bf16 copy."""
    loaded = tiny_int8_model(tiny_checkpoint, tmp_path, monkeypatch)
    mixed_steps = []
    of_batch = int8.RowRouting.of_batch
    monkeypatch.setattr(int8.RowRouting, "of_batch", classmethod(lambda cls, cu: mixed_steps.append(routing := of_batch(cu)) or routing))
    shared = prompt_of(3 * PAGE, offset=6)
    decoding = [GenerationRequest(Role.SINGLE_LINE, 48, tuple(shared + [60 + i])) for i in range(3)]
    prefill = GenerationRequest(Role.SINGLE_LINE, 4, tuple(prompt_of(6 * PAGE, offset=9)))
    with Engine(loaded, EngineConfig(page_size=PAGE, prefix_cache=False)) as engine:
        alone = [engine.generate(request) for request in decoding]
        handles = [engine.submit(request) for request in decoding]
        for handle in handles:
            next(iter(handle.stream()))  # every one decoding before the prefill arrives
        beside = engine.submit(prefill)
        together = [handle.result(timeout=60) for handle in handles]
        beside.result(timeout=60)
    assert any(len(r.int8_rows) and len(r.bf16_rows) for r in mixed_steps), "no step held a prefill beside decoding rows"
    for a, b in zip(alone, together):
        assert (a.token_ids, a.logprobs) == (b.token_ids, b.logprobs)
