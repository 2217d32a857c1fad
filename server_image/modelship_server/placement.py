"""Where a batch runs: on the event-loop thread (inline) or on its session's worker thread.

A worker thread keeps the loop free while ONNX Runtime runs, but it is not free itself:
the handoff costs ~40 µs, and when the run ends the worker must win the GIL back from a
busy loop thread before it can hand the outputs over. Python's switch interval lets that
wait last up to 5 ms, during which the session sits idle; at 8 gRPC clients on a 5 ms
model that wait cost ~20 % of throughput (docs/server-benchmarks.md, issue 13).

Inline, the run costs nothing extra, but the loop answers nothing else meanwhile, health
probes included. So the loop gets a budget: between two polls for I/O ("a turn") it may
spend at most `turn_budget_ns` on inline runs. A run expected to be longer than
`max_run_ns` goes to a thread (it cannot be split); a short one that would overdraw this
turn waits for the next turn (LATER): the loop polls, answers what arrived (a probe among
it), and the run goes inline then. However many requests arrive together, a probe waits
at most about one budget for the loop, and no short run pays for a thread.
"""

from __future__ import annotations

import asyncio
import sys


INLINE, THREAD, LATER = "inline", "thread", "later"


def place(expected_ns: float, spent_ns: int, max_run_ns: int, turn_budget_ns: int) -> str:
    """Where a run expected to take `expected_ns` goes: INLINE now, a THREAD, or LATER
    (inline, in the next loop turn).

    `spent_ns` is what inline runs have already taken in this loop turn. An unknown run
    time (inf, before the first measured run) goes to a thread, and so does every run when
    the threshold is 0 (the operator's "always use threads"). The first run of a turn is
    never put off, so a threshold above the turn budget cannot stall a model.
    """
    if max_run_ns <= 0 or expected_ns > max_run_ns:
        return THREAD
    if spent_ns == 0 or spent_ns + expected_ns <= turn_budget_ns:
        return INLINE
    return LATER


_EWMA = 0.2  # weight of the newest run in a running average
_OUTLIER = 4.0  # one run counts as at most this many times the current average


def averaged(old: float | None, run_ns: float) -> float:
    """The running average after one more run of `run_ns`.

    One run counts for at most `_OUTLIER` times the average so far: on a loaded machine a
    5 ms run can take a second once (preempted, swapped out), and at full weight that one
    run would lift the average past the inline threshold, sending every later run to a
    thread until enough measured runs pull it back (issue 13's collapses). A sustained
    slowdown still gets through: each run may raise the average by 60 %.
    """
    if old is None or old == float("inf"):
        return run_ns
    return (1 - _EWMA) * old + _EWMA * min(run_ns, _OUTLIER * old)


class RunTimes:
    """Running averages of one model's run time: per batch size seen, and per sample.

    `expected(size)` is the average for that size once one ran; before that a cautious
    guess: the per-sample average times the size, never less than a smaller size took
    (a batch has a fixed cost) nor more than a larger one. Nothing measured yet: infinity
    (so: a thread).

    A measured batch also caps the averages of the smaller sizes at its own: a smaller batch
    does not take longer. Without that, a size that stopped running keeps its old average
    for good, and under load size 1 does stop running (requests gather while a run is out):
    one slow spell at size 1 (a warm-up on a busy machine, one preempted run) then sent every
    batch to a thread, gathered, indefinitely, since the cut to an inline part asks size 1.
    """

    def __init__(self) -> None:
        self.by_size: dict[int, float] = {}
        self.per_sample = float("inf")

    def observe(self, size: int, run_ns: float) -> None:
        size = max(size, 1)
        now = self.by_size[size] = averaged(self.by_size.get(size), run_ns)
        for smaller, avg in self.by_size.items():
            if smaller < size and avg > now:
                self.by_size[smaller] = now
        self.per_sample = averaged(self.per_sample, run_ns / size)

    def expected(self, size: int) -> float:
        known = self.by_size.get(size)
        if known is not None:
            return known
        smaller = max((v for s, v in self.by_size.items() if s < size), default=0.0)
        larger = min((v for s, v in self.by_size.items() if s > size), default=float("inf"))
        return max(min(self.per_sample * size, larger), smaller)


class InlineBudget:
    """Inline run time spent in the current loop turn, shared by every model of one server.

    The count is reset by a callback scheduled at the first charge of a turn: asyncio and
    uvloop run callbacks scheduled with `call_soon` only after the loop has polled for I/O
    again, so the reset marks the start of the next turn.
    """

    def __init__(self, max_run_ns: int, turn_budget_ns: int) -> None:
        self.max_run_ns = max_run_ns
        self.turn_budget_ns = turn_budget_ns
        self.spent_ns = 0
        self._armed = False

    def place(self, expected_ns: float) -> str:
        return place(expected_ns, self.spent_ns, self.max_run_ns, self.turn_budget_ns)

    def charge(self, loop: asyncio.AbstractEventLoop, run_ns: int) -> None:
        """Count an inline run against this turn."""
        self.spent_ns += run_ns
        if not self._armed:
            self._armed = True
            loop.call_soon(self._reset)

    def _reset(self) -> None:
        self.spent_ns = 0
        self._armed = False


class SwitchInterval:
    """Python's GIL switch interval, shortened while any model runs on a worker thread.

    When a run ends, its thread needs the GIL to hand the outputs back; a loop thread busy
    with Python keeps it until the switch interval (5 ms by default) forces a switch, and
    the session idles meanwhile. A short interval while runs are out bounds that wait; with
    no run out, the default comes back, so pure-Python work is not switched more than usual.
    Counted on the event-loop thread only (runs are handed out and completed there).
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.out = 0
        self._saved = 0.0

    def run_started(self) -> None:
        self.out += 1
        if self.out == 1 and self.interval_s > 0:
            self._saved = sys.getswitchinterval()
            sys.setswitchinterval(self.interval_s)

    def run_ended(self) -> None:
        self.out -= 1
        if self.out == 0 and self.interval_s > 0:
            sys.setswitchinterval(self._saved)
