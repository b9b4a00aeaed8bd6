"""Waiting in tests for something another thread or process does, without fixed sleeps."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """True as soon as `predicate()` holds; False if it still doesn't after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
