"""Adaptive debounce of keystroke bursts.

Each request on a document cancels the one before (the engine really stops it), so a request that
starts and is superseded wastes a prefill. While keys arrive quickly, waiting about one typical
gap between keys lets only the request at the pause reach the model; when typing is slow, waiting
only adds latency, so the delay drops to zero.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AdaptiveDebounce:
    # Exponential moving average of the gap between requests, in seconds.
    typical_gap_s: float | None = None
    last_request_at: float | None = None
    smoothing: float = 0.3

    def delay(self, now: float, max_delay_s: float) -> float:
        """How long to wait before starting the request that arrived at `now`."""
        if self.last_request_at is not None:
            gap = min(now - self.last_request_at, 2.0)  # a pause in typing is not a typing speed
            self.typical_gap_s = gap if self.typical_gap_s is None else (1 - self.smoothing) * self.typical_gap_s + self.smoothing * gap
        self.last_request_at = now
        if self.typical_gap_s is None or max_delay_s <= 0 or self.typical_gap_s > 2 * max_delay_s:
            return 0.0
        return min(self.typical_gap_s, max_delay_s)
