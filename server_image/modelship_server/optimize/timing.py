"""Robust timing: variants timed interleaved and repeated, judged against their own noise.

A shared machine drifts (turbo, neighbours, caches); timing variants one after another would
credit that drift to whichever ran in the quiet moment. Round-robin rounds spread the drift over
all variants, and a variant beats the baseline only by more than the measured run-to-run spread.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Literal

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


# --- The sequential test: keep timing while the verdict is open -------------------------------
#
# The spread rule above (`beats`) compares a gain with the run-to-run spread, which more rounds
# estimate better but do not shrink: on a loaded machine (spread 20 %) a real 13 % gain stays
# "within noise" however long it is timed. Rounds are interleaved, so a candidate and the
# baseline in the same round saw the same load: their ratio cancels most of it, and a
# confidence interval on the median ratio narrows as rounds accumulate. So while a passing
# candidate's interval still straddles "faster" and "no faster", more rounds are timed, until
# a verdict or the budget.

Verdict = Literal["faster", "not_faster", "undecided"]
EQUIVALENCE_MARGIN = 0.03  # gains below 3 % are not worth a variant: "not faster" once shown below it
MIN_PAIRED_ROUNDS = 6  # the order-statistics interval below needs 6 rounds to exist at 95 %


def paired_ratios(candidate_ms: list[float], baseline_ms: list[float]) -> list[float]:
    """Per-round ratio candidate / baseline over the rounds both ran (rounds are indexed alike)."""
    return [c / b for c, b in zip(candidate_ms, baseline_ms) if b > 0]


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval for the median (order statistics, binomial 1/2);
    None when there are too few values for this confidence."""
    n = len(values)
    ordered = sorted(values)
    alpha = 1.0 - confidence
    # the largest k with P(Binomial(n, 1/2) < k) <= alpha / 2: the interval is [x_(k), x_(n-k+1)]
    k, cumulative = 0, 0.0
    while k < n:
        p_k = math.comb(n, k) / 2.0 ** n
        if cumulative + p_k > alpha / 2:
            break
        cumulative += p_k
        k += 1
    if k == 0:
        return None
    return ordered[k - 1], ordered[n - k]


def paired_verdict(candidate_ms: list[float], baseline_ms: list[float], margin: float = EQUIVALENCE_MARGIN,
                   confidence: float = 0.95, min_rounds: int = MIN_PAIRED_ROUNDS) -> Verdict:
    """'faster' when the median per-round ratio is below 1 with `confidence`; 'not_faster' when it
    is shown above 1 - margin (any gain is smaller than the margin); else 'undecided'."""
    ratios = paired_ratios(candidate_ms, baseline_ms)
    interval = median_interval(ratios, confidence) if len(ratios) >= min_rounds else None
    if interval is None:
        return "undecided"
    low, high = interval
    if high < 1.0:
        return "faster"
    if low > 1.0 - margin:
        return "not_faster"
    return "undecided"


def open_verdicts(per_round: dict[str, list[float]], baseline: str, passed: set[str],
                  margin: float = EQUIVALENCE_MARGIN) -> set[str]:
    """The passing candidates whose verdict could still change the choice: undecided against the
    baseline (and, once some candidate is shown faster, not shown slower than the fastest such
    winner), or 'faster' and undecided against that winner (which of two winners to choose).
    Pure, so the rule is table-tested; the search times these again."""
    rounds = {name: per_round[name] for name in passed if per_round.get(name)}
    base = per_round[baseline]
    verdicts = {name: paired_verdict(values, base, margin) for name, values in rounds.items()}
    open_ = {name for name, verdict in verdicts.items() if verdict == "undecided"}
    winners = [name for name, verdict in verdicts.items() if verdict == "faster"]
    if winners:
        lead = min(winners, key=lambda name: float(np.median(paired_ratios(rounds[name], base))))
        # once a winner is known, an undecided candidate matters only if it may still beat the winner
        open_ = {name for name in open_ if paired_verdict(rounds[name], rounds[lead], margin) != "not_faster"}
        for name in winners:
            if name != lead and paired_verdict(rounds[name], rounds[lead], margin) == "undecided":
                open_ |= {name, lead}
    return open_
