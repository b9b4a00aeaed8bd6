"""The adaptive debounce: waits while keys come fast, never when typing is slow."""

from fimble.lsp_server.debounce import AdaptiveDebounce


def test_fast_typing_waits_about_one_gap_capped_by_the_maximum():
    debounce = AdaptiveDebounce()
    delays = [debounce.delay(t * 0.08, max_delay_s=0.12) for t in range(10)]
    assert delays[0] == 0.0  # nothing known about the typing yet
    assert all(abs(d - 0.08) < 1e-9 for d in delays[1:])
    fast = AdaptiveDebounce()
    assert [fast.delay(t * 0.2, 0.12) for t in range(4)][1:] == [0.12, 0.12, 0.12]


def test_slow_typing_and_a_zero_maximum_do_not_wait():
    slow = AdaptiveDebounce()
    assert [slow.delay(t * 1.0, 0.12) for t in range(5)] == [0.0] * 5
    off = AdaptiveDebounce()
    assert [off.delay(t * 0.05, 0.0) for t in range(5)] == [0.0] * 5


def test_a_pause_counts_as_at_most_two_seconds():
    debounce = AdaptiveDebounce()
    debounce.delay(0.0, 0.12)
    debounce.delay(0.05, 0.12)
    debounce.delay(600.0, 0.12)  # lunch break
    assert debounce.typical_gap_s < 0.7
