"""Candidates: the greedy answer, plus one branch per next-best first token, each continued
greedily. Checked exactly against the plain model (no cache of any kind): the branch points are its
top-k first tokens, each branch is its greedy continuation, the greedy answer is unchanged, and the
branches read the prompt's pages from the prefix cache."""

from __future__ import annotations

import torch

from fimble.models.conversion import structure, unstructure
from fimble.models.engine import branch_token_limit
from fimble.models.generation import GenerationRequest, GenerationResult, StopRules
from fimble.models.spec import Role
from tests.models.test_engine_exactness import ATOL, PAGE, prompt_of, reference_greedy
from tests.models.test_engine_request_maps import assert_idle_and_clean
from tests.waiting import wait_for


def top_first_tokens(model, prompt: list[int], k: int) -> tuple[list[int], list[float]]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), use_cache=False).logits[0, -1].float()
    top = torch.topk(torch.log_softmax(logits, -1), k)
    return top.indices.tolist(), top.values.tolist()


def test_alternatives_are_the_greedy_continuations_of_the_next_best_first_tokens(make_engine, tiny_loaded):
    engine = make_engine(page_size=PAGE)
    prompt = prompt_of(5 * PAGE + 3, offset=2)
    result = engine.generate(GenerationRequest(Role.SINGLE_LINE, 8, tuple(prompt), candidates=3))

    firsts, first_logprobs = top_first_tokens(tiny_loaded.model, prompt, 3)
    greedy, _, _ = reference_greedy(tiny_loaded.model, prompt, 8)
    assert result.token_ids == greedy and greedy[0] == firsts[0]
    assert len(result.alternatives) == 2
    for alternative, first, first_logprob in zip(result.alternatives, firsts[1:], first_logprobs[1:]):
        continuation, logprobs, _ = reference_greedy(tiny_loaded.model, prompt + [first], 7)
        assert alternative.token_ids == (first, *continuation)
        torch.testing.assert_close(torch.tensor(alternative.logprobs), torch.tensor([first_logprob, *logprobs]), atol=ATOL, rtol=0)
        assert alternative.text == engine.tokenizer.decode(list(alternative.token_ids))
        assert alternative.finish_reason == "length" and alternative.alternatives == ()
        # The branch's prompt is the request's plus its first token: all five whole pages are shared.
        assert alternative.stats.cached_tokens == 5 * PAGE
    assert_idle_and_clean(engine)


def test_a_first_token_that_ends_the_answer_gets_no_branch(make_engine, tiny_loaded):
    engine = make_engine(page_size=PAGE)
    prompt = prompt_of(40, offset=5)
    firsts, _ = top_first_tokens(tiny_loaded.model, prompt, 3)
    stop = StopRules(token_ids=(firsts[1],))  # the second-best first token is a stop token
    result = engine.generate(GenerationRequest(Role.SINGLE_LINE, 6, tuple(prompt), stop=stop, candidates=3))
    assert [alternative.token_ids[0] for alternative in result.alternatives] == [firsts[2]]


def natural_length(continuation: list[int], stop: set[int]) -> int:
    """Tokens until the first stop token, itself included; the whole continuation without one."""
    return next((i + 1 for i, token in enumerate(continuation) if token in stop), len(continuation))


def test_a_branch_still_writing_well_past_the_finished_answer_is_dropped(make_engine, tiny_loaded):
    """The answer ends at its 3rd token (a stop token), so a branch may reach branch_token_limit(3)
    tokens: the branch that stops within them is kept, exactly, and the one still writing there is
    dropped, and its pages freed."""
    model, max_new_tokens, finished = tiny_loaded.model, 40, 3
    limit = branch_token_limit(finished)
    for offset in range(40):  # a prompt whose two branches fall on either side of the limit
        prompt = prompt_of(40, offset=offset)
        greedy, _, _ = reference_greedy(model, prompt, finished)
        firsts, _ = top_first_tokens(model, prompt, 3)
        kept_first, dropped_first = firsts[1], firsts[2]
        kept = [kept_first, *reference_greedy(model, prompt + [kept_first], max_new_tokens - 1)[0]]
        dropped = [dropped_first, *reference_greedy(model, prompt + [dropped_first], max_new_tokens - 1)[0]]
        # Stop tokens: the answer's 3rd, and the kept branch's at some point within the limit.
        stop = {greedy[finished - 1], kept[limit // 2]}
        scenario = (
            natural_length(greedy, stop) == finished and natural_length(kept, stop) <= limit
            and natural_length(dropped, stop) > limit and not stop & {kept_first, dropped_first}
        )
        if scenario:
            break
    assert scenario, "no prompt among those tried puts the branches on either side of the limit"

    engine = make_engine(page_size=PAGE)
    request = GenerationRequest(Role.SINGLE_LINE, max_new_tokens, tuple(prompt), stop=StopRules(token_ids=tuple(sorted(stop))), candidates=3)
    result = engine.generate(request)
    assert result.token_ids == tuple(greedy) and result.finish_reason == "stop_token"
    assert [alternative.token_ids for alternative in result.alternatives] == [tuple(kept[: natural_length(kept, stop)])]
    assert result.alternatives[0].finish_reason == "stop_token"
    assert_idle_and_clean(engine)


def test_one_candidate_asks_for_no_branch(make_engine):
    engine = make_engine(page_size=PAGE)
    result = engine.generate(GenerationRequest(Role.SINGLE_LINE, 6, tuple(prompt_of(40))))
    assert result.alternatives == ()
    assert len(engine.first_tokens) == 0


def test_cancelling_a_request_cancels_its_branches_and_frees_everything(make_engine):
    engine = make_engine(page_size=PAGE)
    handle = engine.submit(GenerationRequest(Role.SINGLE_LINE, 1500, tuple(prompt_of(40)), candidates=3))
    assert wait_for(lambda: len(handle.branches) == 2 and all(branch.progress.token_ids[1:] for branch in handle.branches), timeout_s=60)
    handle.cancel()
    result = handle.result(timeout=10)
    assert result.finish_reason == "cancelled"
    assert [alternative.finish_reason for alternative in result.alternatives] == ["cancelled", "cancelled"]
    assert_idle_and_clean(engine)


def test_a_result_with_alternatives_crosses_the_wire_unchanged(make_engine):
    engine = make_engine(page_size=PAGE)
    result = engine.generate(GenerationRequest(Role.SINGLE_LINE, 5, tuple(prompt_of(30, offset=9)), candidates=2))
    assert result.alternatives
    assert structure(unstructure(result), GenerationResult) == result
