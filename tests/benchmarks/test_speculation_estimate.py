"""The speculation estimate's replay: iterations as greedy speculation with k drafts takes them."""

from __future__ import annotations

from benchmarks.speculation_estimate import estimate, iterations


def test_each_iteration_accepts_the_agreeing_run_up_to_k_then_the_target_adds_a_token():
    assert iterations([True] * 10, 4) == 2  # 4 accepted + 1 of the target's, twice
    assert iterations([False] * 5, 4) == 5  # nothing accepted: one token per iteration, as plain decoding
    assert iterations([True, False, True, True, True], 2) == 2  # [T] + target's, then [T, T] + target's
    assert iterations([], 3) == 0


def test_the_speedup_weighs_accepted_tokens_against_draft_and_verification_cost():
    rows_ms = {"1": 100.0, "2": 150.0, "3": 200.0, "5": 200.0, "9": 300.0}
    result = estimate("chat", [[True] * 10], draft_s=0.05, target_s=0.1, rows_ms=rows_ms)
    k4 = result["by_draft_length"]["4"]
    # 2 iterations of (4 drafts x 0.05 s + 0.2 s verification) against 10 plain steps of 0.1 s.
    assert k4["tokens_per_iteration"] == 5 and k4["verify_cost_in_decode_steps"] == 2.0
    assert k4["estimated_speedup"] == round(1.0 / 0.8, 3)
    assert result["accept_rate"] == 1.0
