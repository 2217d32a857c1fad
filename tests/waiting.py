"""Polling until a condition holds, for tests that watch a cluster or a process converge."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 60.0, interval: float = 0.5) -> T:
    """Call `check` until it returns something truthy and return that; on timeout, fail with
    `what` and the last value seen, which is usually the clue."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last seen: {last!r}")
