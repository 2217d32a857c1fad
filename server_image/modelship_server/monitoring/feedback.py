"""The bounded store of recent predictions by request id, joined to labels that arrive later.

An OrderedDict of put times in insertion (= time) order: inserting evicts from the old end
everything past its TTL and anything over `max_entries`, so memory is bounded by max_entries x
(one prediction + ~250 bytes) whatever the traffic. Evicted ids are remembered (ids only, as
many again) so late feedback is answered `expired` rather than `unknown_id`. Used on the
event-loop thread only.

Nothing kept per entry is an object the cyclic garbage collector tracks (ids are str, times
float, predictions ndarrays, each in a dict of its own): with a (time, prediction) tuple per
entry, a full store of 100,000 made every request's allocations trigger collections that walked
it, and a full collection paused the event loop ~25 ms (the p99 that monitoring added).
"""

from __future__ import annotations

import collections
import time
from typing import Callable

import numpy as np

JOINED, UNKNOWN, EXPIRED, INVALID = "joined", "unknown_id", "expired", "invalid"


class PredictionStore:
    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.entries: collections.OrderedDict[str, float] = collections.OrderedDict()  # id -> put time
        self.predictions: dict[str, np.ndarray] = {}
        self.gone: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._oldest_t = 0.0  # the oldest entry's time, or earlier (a put then looks at the old end)

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, request_id: str, predicted: np.ndarray) -> None:
        """On every answered request: kept lean (a full store pays one insert and two pops)."""
        now = self.clock()
        entries = self.entries
        if request_id in entries:  # a repeated id moves to the new end
            del entries[request_id]
        elif not entries:
            self._oldest_t = now
        entries[request_id] = now
        self.predictions[request_id] = predicted
        if len(entries) > self.max_entries:
            oldest_id = entries.popitem(last=False)[0]
            del self.predictions[oldest_id]
            gone = self.gone
            gone[oldest_id] = None
            if len(gone) > self.max_entries:
                gone.popitem(last=False)
        if now - self._oldest_t > self.ttl_s:  # the oldest may have aged out: look at the old end
            self._age_out(now)

    def _age_out(self, now: float) -> None:
        entries = self.entries
        while entries:
            for oldest_id, t in entries.items():
                break
            if now - t <= self.ttl_s:
                self._oldest_t = t
                return
            entries.popitem(last=False)
            del self.predictions[oldest_id]
            self._forget(oldest_id)

    def _forget(self, request_id: str) -> None:
        self.gone[request_id] = None
        while len(self.gone) > self.max_entries:
            self.gone.popitem(last=False)

    def lookup(self, request_id: str) -> tuple[str, np.ndarray | None]:
        """(JOINED, prediction) for a live id, else (EXPIRED | UNKNOWN, None); the id stays until `consume`."""
        t = self.entries.get(request_id)
        if t is None:
            return (EXPIRED if request_id in self.gone else UNKNOWN), None
        if self.clock() - t > self.ttl_s:
            del self.entries[request_id]
            del self.predictions[request_id]
            self._forget(request_id)
            return EXPIRED, None
        return JOINED, self.predictions[request_id]

    def consume(self, request_id: str) -> None:
        """A label joined: the id takes no second one (a repeat is answered `expired`)."""
        if self.entries.pop(request_id, None) is not None:
            del self.predictions[request_id]
            self._forget(request_id)
