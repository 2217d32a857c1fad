"""Robust timing: variants timed interleaved and repeated, judged against their own noise.

A shared machine drifts (turbo, neighbours, caches); timing variants one after another would
credit that drift to whichever ran in the quiet moment. Round-robin rounds spread the drift over
all variants, and a variant beats the baseline only by more than the measured run-to-run spread.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
from pydantic import BaseModel


class TimingStats(BaseModel):
    """Per-call latency of one variant: median over rounds, and relative run-to-run spread."""

    median_ms: float
    spread: float  # (p75 - p25) / median of the per-round medians; 0.05 = 5 %
    rounds_ms: list[float]


def stats(rounds_ms: list[float]) -> TimingStats:
    if not rounds_ms:
        raise ValueError("no timing rounds")
    values = np.asarray(rounds_ms, dtype=np.float64)
    median = float(np.median(values))
    q25, q75 = np.percentile(values, [25, 75])
    spread = float((q75 - q25) / median) if median > 0 else 0.0
    return TimingStats(median_ms=median, spread=spread, rounds_ms=[round(v, 6) for v in rounds_ms])


def speedup(baseline: TimingStats, candidate: TimingStats) -> float:
    """How many times faster the candidate is (>1 faster, <1 slower)."""
    return baseline.median_ms / candidate.median_ms if candidate.median_ms > 0 else float("inf")


def beats(baseline: TimingStats, candidate: TimingStats, min_gain: float = 0.0) -> bool:
    """True only if the gain exceeds the noise of both measurements (and `min_gain`)."""
    noise = max(baseline.spread, candidate.spread, min_gain)
    return speedup(baseline, candidate) - 1.0 > noise


def plan(budget_seconds: float, per_call_ms: list[float], rounds: int, calls: int, warmup: int = 3,
         min_rounds: int = 3, min_calls: int = 2) -> tuple[int, int]:
    """(rounds, calls) for timing variants whose single calls take `per_call_ms`, within budget.

    Calls per round go first (rounds are what the spread is measured over), then rounds, never
    below the minimums: past them, timing more briefly would measure noise, not the variants.
    """
    per_call_all = sum(per_call_ms) / 1000.0  # one call of every variant, seconds
    if per_call_all <= 0:
        return rounds, calls
    affordable = budget_seconds / per_call_all - warmup  # calls of every variant that fit
    if rounds * calls <= affordable:
        return rounds, calls
    fit_calls = int(affordable // rounds)
    if fit_calls >= min_calls:
        return rounds, min(calls, fit_calls)
    return max(min_rounds, min(rounds, int(affordable // min_calls))), min(calls, min_calls)


def cost_seconds(per_call_ms: list[float], rounds: int, calls: int, warmup: int = 3) -> float:
    """Estimated wall time of time_interleaved for these variants and settings."""
    return sum(per_call_ms) / 1000.0 * (warmup + rounds * calls)


def outpaced(per_round: dict[str, list[float]], protected: set[str]) -> set[str]:
    """Variants already slower than the fastest unprotected one beyond both their spreads.

    Such a variant cannot be chosen (the choice is the fastest that beats the baseline), so
    timing it further only costs time. Pure, so the rule is table-tested.
    """
    current = {name: stats(values) for name, values in per_round.items() if values}
    open_ = [name for name in current if name not in protected]
    if len(open_) < 2:
        return set()
    best = min(open_, key=lambda name: current[name].median_ms)
    lead = current[best]
    return {name for name in open_ if name != best and current[name].median_ms > lead.median_ms * (
        1.0 + max(current[name].spread, lead.spread))}


def time_interleaved(runners: dict[str, Callable[[], object]], rounds: int = 7, calls: int = 20,
                     warmup: int = 3, protected: set[str] | None = None,
                     race_after: int | None = None) -> dict[str, TimingStats]:
    """Time each runner `calls` times per round, rounds in rotating order; stats per runner
    over the rounds' median calls.

    With `race_after`, from that many rounds on a runner outpaced by another (see `outpaced`)
    stops being timed; `protected` runners (the baseline) always run every round. The stats of
    a dropped runner cover the rounds it ran.
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    per_round: dict[str, list[float]] = {name: [] for name in names}
    active = list(names)
    for r in range(rounds):
        order = [n for n in names[r % len(names):] + names[:r % len(names)] if n in active]
        for name in order:
            run = runners[name]
            durations = []
            for _ in range(calls):
                start = time.perf_counter()
                run()
                durations.append(time.perf_counter() - start)
            # The round's median call, not its mean: a neighbour's burst on a shared machine
            # hits a few calls, and should not move the whole round.
            per_round[name].append(float(np.median(durations)) * 1000.0)
        if race_after is not None and r + 1 >= race_after and r + 1 < rounds:
            dropped = outpaced({n: per_round[n] for n in active}, protected or set())
            active = [n for n in active if n not in dropped]
    return {name: stats(values) for name, values in per_round.items()}
