"""The search: build candidates, gate them on accuracy, time the survivors, choose.

Choice rule: the fastest candidate that passes the gate and beats the baseline by more than the
measured noise; otherwise the baseline (the original file). So the result is never slower than
what the user gave us, within what we can measure.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
import onnxruntime as ort

from . import candidates as cand
from .gate import GateSpec, evaluate
from .inputs import Feed
from .report import Candidate, Report, outcome_of
from .timing import TimingStats, beats, cost_seconds, plan, speedup, time_interleaved


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def choose(baseline: str, timings: dict[str, TimingStats], passed: set[str]) -> tuple[str, dict[str, str]]:
    """Pure decision: the fastest gated candidate that beats the baseline, and why each lost."""
    base = timings[baseline]
    reasons: dict[str, str] = {}
    winners = []
    for name, stats in timings.items():
        if name == baseline:
            continue
        if name not in passed:
            continue
        gain = speedup(base, stats)
        if beats(base, stats):
            winners.append((stats.median_ms, name))
            reasons[name] = f"{gain:.3f}x faster than baseline, beyond the measured spread"
        else:
            reasons[name] = (f"not faster than baseline beyond noise ({gain:.3f}x, spread "
                             f"{max(base.spread, stats.spread) * 100:.1f}%)")
    if not winners:
        reasons[baseline] = "nothing beat it beyond the measured spread"
        return baseline, reasons
    winners.sort()
    best = winners[0][1]
    reasons[best] = "fastest that passes the gate: " + reasons[best]
    for _, name in winners[1:]:
        reasons[name] = f"passes but slower than {best}: " + reasons[name]
    reasons[baseline] = f"{best} beats it"
    return best, reasons


def _run(session: ort.InferenceSession, feeds: list[Feed]) -> list[list[np.ndarray]]:
    return [session.run(None, feed) for feed in feeds]


def _timed_run(session: ort.InferenceSession, feeds: list[Feed],
               clock: Callable[[], float]) -> tuple[list[list[np.ndarray]], float]:
    """Outputs on every feed, and the mean milliseconds per call (the timing plan's estimate)."""
    t0 = clock()
    outputs = _run(session, feeds)
    return outputs, (clock() - t0) * 1000.0 / max(len(feeds), 1)


MIN_TIMING_ROUNDS, MIN_TIMING_CALLS = 3, 2


def optimize(model: Path, output_dir: Path, calibration: list[Feed], validation: list[Feed], gate: GateSpec,
             *, input_source: str, budget_seconds: float = 600.0, rounds: int = 7, calls: int = 20,
             recipes: list[cand.Recipe] | None = None, skipped: list[cand.Skipped] | None = None,
             progress: TextIO = sys.stderr, clock: Callable[[], float] = time.monotonic) -> Report:
    """Run the whole search and write output_dir/model.onnx; the report says what happened.

    `budget_seconds` bounds the whole search: a candidate is built only if, after the longest
    build so far, the survivors can still be timed at the minimum rounds and calls; timing then
    gets `rounds` x `calls` scaled down to what is left (see timing.plan).
    """
    start = clock()

    def say(line: str) -> None:
        print(f"[optimize {clock() - start:6.1f}s] {line}", file=progress, flush=True)

    if recipes is None:
        import onnx

        graph = onnx.load(str(model), load_external_data=False)
        recipes, default_skipped = cand.default_recipes(transformer=cand.looks_like_transformer(graph),
                                                        convolutional=cand.has_convolutions(graph))
        skipped = default_skipped if skipped is None else skipped
    output_dir.mkdir(parents=True, exist_ok=True)
    base_recipe = cand.baseline_recipe()
    results: dict[str, Candidate] = {}
    sessions: dict[str, ort.InferenceSession] = {}
    files: dict[str, Path] = {}
    passed: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="modelship-optimize-") as tmp:
        work = Path(tmp)
        files["baseline"] = cand.build(base_recipe, model, work, calibration)
        sessions["baseline"] = cand.open_session(base_recipe, files["baseline"])
        reference, base_ms = _timed_run(sessions["baseline"], validation, clock)
        per_call_ms: dict[str, float] = {"baseline": base_ms}
        longest_build = 0.0
        results["baseline"] = Candidate(name="baseline", recipe=base_recipe, status="kept", reason="reference",
                                        size_bytes=files["baseline"].stat().st_size)
        say(f"baseline ready; {len(recipes)} candidates, budget {budget_seconds:g}s")
        for recipe in recipes:
            # Reserve: this build (as long as the longest so far) and timing everything kept
            # plus this one (as slow as the slowest so far) at the minimum rounds and calls.
            reserve = longest_build + cost_seconds(list(per_call_ms.values()) + [max(per_call_ms.values())],
                                                   MIN_TIMING_ROUNDS, MIN_TIMING_CALLS)
            if clock() - start + reserve > budget_seconds:
                results[recipe.name] = Candidate(name=recipe.name, recipe=recipe, status="skipped",
                                                 reason="budget exhausted")
                say(f"{recipe.name}: skipped, budget exhausted")
                continue
            t0 = clock()
            try:
                path = cand.build(recipe, model, work, calibration)
                session = cand.open_session(recipe, path)
                outputs, call_ms = _timed_run(session, validation, clock)
            except Exception as exc:  # a recipe that does not apply to this model is a finding, not a crash
                results[recipe.name] = Candidate(name=recipe.name, recipe=recipe, status="rejected",
                                                 reason=f"build failed: {type(exc).__name__}: {str(exc)[:200]}")
                say(f"{recipe.name}: build failed ({type(exc).__name__})")
                continue
            finally:
                longest_build = max(longest_build, clock() - t0)
            verdict = evaluate(gate, reference, outputs)
            entry = Candidate(name=recipe.name, recipe=recipe, status="kept" if verdict.passed else "rejected",
                              reason=("gate passed: " if verdict.passed else "gate failed: ") + verdict.reason,
                              gate=verdict, size_bytes=path.stat().st_size, build_seconds=round(clock() - t0, 3))
            results[recipe.name] = entry
            say(f"{recipe.name}: {entry.reason}")
            if verdict.passed:
                passed.add(recipe.name)
                sessions[recipe.name], files[recipe.name] = session, path
                per_call_ms[recipe.name] = call_ms
        for item in skipped or []:
            results[item.name] = Candidate(name=item.name, status="skipped", reason=item.reason)
        wanted = (rounds, calls)
        rounds, calls = plan(budget_seconds - (clock() - start), list(per_call_ms.values()), rounds, calls,
                             min_rounds=min(MIN_TIMING_ROUNDS, rounds), min_calls=min(MIN_TIMING_CALLS, calls))
        scaled = "" if (rounds, calls) == wanted else f" (scaled down from {wanted[0]} x {wanted[1]} to fit the budget)"
        say(f"timing {len(sessions)} variants: {rounds} interleaved rounds of {calls} calls{scaled}")
        feed = validation[0]
        # Racing: from round 3 on, a variant outpaced by another beyond noise stops being timed.
        timings = time_interleaved({n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()},
                                   rounds=rounds, calls=calls, protected={"baseline"},
                                   race_after=MIN_TIMING_ROUNDS)
        raced_out = {n for n, t in timings.items() if len(t.rounds_ms) < rounds}
        chosen, reasons = choose("baseline", timings, passed - raced_out)
        for name in raced_out & passed:
            reasons[name] = (f"outpaced by a faster variant beyond noise after {len(timings[name].rounds_ms)} of "
                             f"{rounds} rounds ({speedup(timings['baseline'], timings[name]):.3f}x); timing stopped")
        for name, stats in timings.items():
            entry = results[name]
            entry.timing = stats
            entry.speedup = round(speedup(timings["baseline"], stats), 4)
            if name in reasons:
                entry.reason = reasons[name] if name == "baseline" else f"{entry.reason}; {reasons[name]}"
            entry.status = "chosen" if name == chosen else entry.status
        out = output_dir / "model.onnx"
        shutil.copyfile(files[chosen], out)
    say(f"chosen: {chosen}")
    ordered = [results["baseline"]] + [c for n, c in results.items() if n != "baseline"]
    return Report(model_sha256=sha256_file(model), output_sha256=sha256_file(out), chosen=chosen,
                  outcome=outcome_of(chosen, ordered), spread=round(timings["baseline"].spread, 4),
                  chosen_recipe=results[chosen].recipe, gate=gate, validation_inputs=len(validation),
                  input_source=input_source, onnxruntime_version=ort.__version__,
                  timing_rounds=rounds, timing_calls=calls,
                  duration_seconds=round(clock() - start, 3), candidates=ordered)
