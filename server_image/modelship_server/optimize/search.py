"""The search: build candidates, gate them on accuracy, time the survivors, choose.

Choice rule: the fastest candidate that passes the gate and beats the baseline by more than the
measured noise; otherwise the baseline (the original file). So the result is never slower than
what the user gave us, within what we can measure.
"""

from __future__ import annotations

import functools
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
from .builds import Builds, Built, available_memory_bytes, usable_cpus, worker_count
from . import gpu_candidates as gpu
from .gate import GateSpec, evaluate
from .gpu_candidates import explain_failure
from .inputs import Feed
from .report import Candidate, Report, outcome_of
from .timing import (MIN_PAIRED_ROUNDS, TimingStats, Verdict, beats, cost_seconds, open_verdicts, paired_verdict, plan, speedup,
                     time_interleaved)
from .timing import stats as timing_stats


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def choose(baseline: str, timings: dict[str, TimingStats], passed: set[str],
           paired: dict[str, Verdict] | None = None) -> tuple[str, dict[str, str]]:
    """Pure decision: the fastest gated candidate that beats the baseline, and why each lost.

    A candidate beats the baseline beyond the measured spread (`beats`) unless, with `paired`, the
    sequential test over interleaved rounds shows it not faster (timing.paired_verdict); or
    when that test shows it faster although the gain is within the spread."""
    base = timings[baseline]
    reasons: dict[str, str] = {}
    winners = []
    paired = paired or {}
    for name, stats in timings.items():
        if name == baseline:
            continue
        if name not in passed:
            continue
        gain = speedup(base, stats)
        if beats(base, stats) and paired.get(name) == "not_faster":
            reasons[name] = (f"not faster than baseline in paired rounds ({gain:.3f}x by medians, beyond the "
                             f"spread, but not per round: the load moved between rounds)")
        elif beats(base, stats):
            winners.append((stats.median_ms, name))
            reasons[name] = f"{gain:.3f}x faster than baseline, beyond the measured spread"
        elif paired.get(name) == "faster" and gain > 1.0:
            winners.append((stats.median_ms, name))
            reasons[name] = (f"{gain:.3f}x faster than baseline: within the spread "
                             f"({max(base.spread, stats.spread) * 100:.1f}%), but faster in paired rounds "
                             f"(sequential test, {len(stats.rounds_ms)} rounds)")
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


def _timed_run(session: ort.InferenceSession, feeds: list[Feed],
               clock: Callable[[], float]) -> tuple[list[list[np.ndarray]], float]:
    """Outputs on every feed, and the mean milliseconds per call (the timing plan's estimate)."""
    t0 = clock()
    outputs = [session.run(None, feed) for feed in feeds]
    return outputs, (clock() - t0) * 1000.0 / max(len(feeds), 1)


MIN_TIMING_ROUNDS, MIN_TIMING_CALLS = 3, 2


def gpu_fallback(recipe: cand.Recipe, got: list[str]) -> str | None:
    """Why a GPU candidate's session is not on its provider (None when it is, or for CPU ones)."""
    return gpu.fallback_reason(recipe.providers[0], got) if recipe.on_gpu else None


class BuildFailed(Exception):
    """A candidate's build raised; the message is the build's own error."""


class BaselineFailed(Exception):
    """The original model does not run on the inputs: nothing can be compared; says why."""


class _Search:
    """One search's state, phase by phase: the baseline, builds gated as they finish, timing."""

    def __init__(self, model: Path, validation: list[Feed], gate: GateSpec, budget_seconds: float,
                 progress: TextIO, clock: Callable[[], float]):
        self.model, self.validation, self.gate = model, validation, gate
        self.budget_seconds, self.progress, self.clock = budget_seconds, progress, clock
        self.start = clock()
        self.results: dict[str, Candidate] = {}
        self.sessions: dict[str, ort.InferenceSession] = {}  # what passed the gate, plus the baseline
        self.files: dict[str, Path] = {}
        self.per_call_ms: dict[str, float] = {}
        self.longest_build = 0.0
        self.reference: list[list[np.ndarray]] = []

    def say(self, line: str) -> None:
        print(f"[optimize {self.clock() - self.start:6.1f}s] {line}", file=self.progress, flush=True)

    def baseline(self, on_gpu: bool = False) -> None:
        """The original file itself: no copy, it is only read (and copied out if it stays the choice).
        On CUDA where the Job has a GPU: GPU candidates must beat the original as served there."""
        recipe, path = cand.baseline_recipe(on_gpu), self.model
        self.sessions["baseline"] = cand.open_session(recipe, path)
        try:
            self.reference, self.per_call_ms["baseline"] = _timed_run(self.sessions["baseline"], self.validation,
                                                                      self.clock)
        except Exception as exc:  # noqa: BLE001 - the inputs, not a candidate, are wrong: say so, in its words
            detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            shapes = ", ".join(f"{name} {list(np.shape(value))}" for name, value in self.validation[0].items())
            raise BaselineFailed(f"the original model does not run on its inputs ({shapes}): {detail}") from None
        self.files["baseline"] = path
        self.results["baseline"] = Candidate(name="baseline", recipe=recipe, status="kept", reason="reference",
                                             size_bytes=path.stat().st_size)

    def affordable(self) -> bool:
        """Whether one more build fits: as long as the longest so far, then timing everything kept
        plus it (as slow as the slowest so far) at the minimum rounds and calls."""
        slowest = max(self.per_call_ms.values())
        reserve = self.longest_build + cost_seconds(list(self.per_call_ms.values()) + [slowest],
                                                    MIN_TIMING_ROUNDS, MIN_TIMING_CALLS)
        return self.clock() - self.start + reserve <= self.budget_seconds

    def build_all(self, recipes: list[cand.Recipe], builds: Builds) -> None:
        """Build every recipe the budget allows, `builds.workers` at a time; gate each as it lands."""
        queue = list(recipes)
        while queue or builds.in_flight:
            while queue and builds.in_flight < builds.workers:
                recipe = queue.pop(0)
                if self.affordable():
                    builds.submit(recipe)
                else:
                    self.results[recipe.name] = Candidate(name=recipe.name, recipe=recipe, status="skipped",
                                                          reason="budget exhausted")
                    self.say(f"{recipe.name}: skipped, budget exhausted")
            if builds.in_flight:
                self.assess(builds.next_done())

    def assess(self, built: Built) -> None:
        """Open the built file, run it on the validation inputs and gate it against the baseline."""
        recipe, t0 = built.recipe, self.clock()
        try:
            if built.path is None:
                raise BuildFailed(built.error or "no file")
            session = cand.open_session(recipe, built.path)
            fallback = gpu_fallback(recipe, session.get_providers())
            if fallback is not None:  # ORT quietly ran it on what was left: not the candidate it claims to be
                self.results[recipe.name] = Candidate(name=recipe.name, recipe=recipe, status="skipped", reason=fallback)
                self.say(f"{recipe.name}: skipped, {fallback}")
                return
            outputs, call_ms = _timed_run(session, self.validation, self.clock)
        except Exception as exc:  # noqa: BLE001 - a recipe that does not apply to this model is a finding, not a crash
            if recipe.on_gpu and not isinstance(exc, BuildFailed):
                # a provider that cannot take this model (an op TensorRT lacks, a library missing):
                # skipped with why, and the search goes on
                why = explain_failure(recipe.providers[0], str(exc))
                self.results[recipe.name] = Candidate(name=recipe.name, recipe=recipe, status="skipped", reason=why)
                self.say(f"{recipe.name}: skipped, {why}")
                return
            detail = str(exc) if isinstance(exc, BuildFailed) else f"{type(exc).__name__}: {str(exc)[:200]}"
            self.results[recipe.name] = Candidate(name=recipe.name, recipe=recipe, status="rejected",
                                                  reason=f"build failed: {detail}")
            self.say(f"{recipe.name}: build failed ({detail.split(':')[0]})")
            return
        finally:
            self.longest_build = max(self.longest_build, built.seconds + self.clock() - t0)
        verdict = evaluate(self.gate, self.reference, outputs)
        entry = Candidate(name=recipe.name, recipe=recipe, status="kept" if verdict.passed else "rejected",
                          reason=("gate passed: " if verdict.passed else "gate failed: ") + verdict.reason,
                          gate=verdict, size_bytes=built.path.stat().st_size,
                          build_seconds=round(built.seconds + self.clock() - t0, 3))
        self.results[recipe.name] = entry
        self.say(f"{recipe.name}: {entry.reason}")
        if verdict.passed:
            self.sessions[recipe.name], self.files[recipe.name] = session, built.path
            self.per_call_ms[recipe.name] = call_ms

    def time_and_choose(self, rounds: int, calls: int) -> tuple[str, dict[str, TimingStats], int, int]:
        """Time what passed, interleaved and raced, within what is left of the budget; choose."""
        wanted = (rounds, calls)
        rounds, calls = plan(self.budget_seconds - (self.clock() - self.start), list(self.per_call_ms.values()),
                             rounds, calls, min_rounds=min(MIN_TIMING_ROUNDS, rounds),
                             min_calls=min(MIN_TIMING_CALLS, calls))
        scaled = "" if (rounds, calls) == wanted else f" (scaled down from {wanted[0]} x {wanted[1]} to fit the budget)"
        self.say(f"timing {len(self.sessions)} variants: {rounds} interleaved rounds of {calls} calls{scaled}")
        feed = self.validation[0]
        # Racing: from round 6 on, a variant outpaced by another beyond noise stops being timed (after
        # 3 rounds, a loaded machine's swings dropped the variant that was 1.6x faster head to head).
        timings = time_interleaved({n: functools.partial(s.run, None, feed) for n, s in self.sessions.items()},
                                   rounds=rounds, calls=calls, protected={"baseline"},
                                   race_after=MIN_PAIRED_ROUNDS)
        raced_out = {n for n, t in timings.items() if len(t.rounds_ms) < rounds}
        passed = set(self.sessions) - {"baseline"}
        timings = self.sequential(timings, passed - raced_out, calls)
        paired = {n: paired_verdict(timings[n].rounds_ms, timings["baseline"].rounds_ms) for n in passed - raced_out}
        chosen, reasons = choose("baseline", timings, passed - raced_out, paired)
        for name in raced_out & passed:
            reasons[name] = (f"outpaced by a faster variant beyond noise after {len(timings[name].rounds_ms)} of "
                             f"{rounds} rounds ({speedup(timings['baseline'], timings[name]):.3f}x); timing stopped")
        for name, stats in timings.items():
            entry = self.results[name]
            entry.timing = stats
            entry.speedup = round(speedup(timings["baseline"], stats), 4)
            if name in reasons:
                entry.reason = reasons[name] if name == "baseline" else f"{entry.reason}; {reasons[name]}"
            entry.status = "chosen" if name == chosen else entry.status
        return chosen, timings, rounds, calls


    def sequential(self, timings: dict[str, TimingStats], contenders: set[str], calls: int,
                   batch_rounds: int = 3, max_rounds: int = 60) -> dict[str, TimingStats]:
        """More interleaved rounds for the candidates whose verdict is still open (timing.open_verdicts),
        with the baseline, `batch_rounds` at a time, until every verdict is in, the budget is
        spent, or `max_rounds` rounds were timed. Returns the timings over all rounds."""
        per_round = {n: list(t.rounds_ms) for n, t in timings.items()}
        extra = 0
        while len(per_round["baseline"]) + batch_rounds <= max_rounds:
            open_ = open_verdicts(per_round, "baseline", contenders)
            if not open_:
                break
            names = ["baseline"] + sorted(open_)
            left = self.budget_seconds - (self.clock() - self.start)
            # twice the estimate: per-call figures come from one pass, and a loaded machine slows them
            if 2 * cost_seconds([self.per_call_ms[n] for n in names], batch_rounds, calls, warmup=1) > left:
                self.say(f"sequential test: budget spent with {', '.join(sorted(open_))} undecided")
                break
            more = time_interleaved({n: functools.partial(self.sessions[n].run, None, self.validation[0]) for n in names},
                                    rounds=batch_rounds, calls=calls, warmup=1)
            for name in names:
                per_round[name] += more[name].rounds_ms
            extra += batch_rounds
        if extra:
            self.say(f"sequential test: {extra} more rounds for the undecided; "
                     f"open now: {', '.join(sorted(open_verdicts(per_round, 'baseline', contenders))) or 'none'}")
        return {n: timing_stats(values) if values else timings[n] for n, values in per_round.items()}


def optimize(model: Path, output_dir: Path, calibration: list[Feed], validation: list[Feed], gate: GateSpec,
             *, input_source: str, budget_seconds: float = 600.0, rounds: int = 7, calls: int = 10,
             recipes: list[cand.Recipe] | None = None, skipped: list[cand.Skipped] | None = None,
             workers: int | None = None, progress: TextIO = sys.stderr,
             clock: Callable[[], float] = time.monotonic,
             tensorrt_profile: tuple[gpu.Profile | None, str] | None = None) -> Report:
    """Run the whole search and write output_dir/model.onnx; the report says what happened.

    `budget_seconds` bounds the whole search: a candidate is built only if, after the longest
    build so far, the survivors can still be timed at the minimum rounds and calls; timing then
    gets `rounds` x `calls` scaled down to what is left (see timing.plan). Candidates are built
    by `workers` processes at once (default: as many as the CPUs and memory allow, builds.py);
    gating and timing stay in this process.
    """
    search = _Search(model, validation, gate, budget_seconds, progress, clock)
    if recipes is None:
        import onnx

        graph = onnx.load(str(model), load_external_data=False)
        recipes, default_skipped = cand.default_recipes(transformer=cand.looks_like_transformer(graph),
                                                        convolutional=cand.has_convolutions(graph),
                                                        profile=tensorrt_profile)
        skipped = default_skipped if skipped is None else skipped
    skipped = skipped or []
    output_dir.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = worker_count(usable_cpus(), model.stat().st_size, available_memory_bytes())
    with tempfile.TemporaryDirectory(prefix="modelship-optimize-") as tmp, \
            Builds(model, Path(tmp), calibration, workers) as builds:
        builds.start()  # workers start up while the baseline runs
        search.baseline(on_gpu=any(r.on_gpu for r in recipes))
        search.say(f"baseline ready; {len(recipes)} candidates, budget {budget_seconds:g}s, {workers} build "
                   f"worker{'s' if workers > 1 else ''}")
        search.build_all(recipes, builds)
        for item in skipped:
            search.results[item.name] = Candidate(name=item.name, status="skipped", reason=item.reason)
        chosen, timings, rounds, calls = search.time_and_choose(rounds, calls)
        out = output_dir / "model.onnx"
        if search.files[chosen].resolve() != out.resolve():  # --output may be the original's own folder
            shutil.copyfile(search.files[chosen], out)
    search.say(f"chosen: {chosen}")
    # Builds finish in any order; the report lists candidates in the order they were proposed.
    results = search.results
    ordered = [results["baseline"]] + [results[r.name] for r in recipes] + [results[k.name] for k in skipped]
    chosen_recipe = results[chosen].recipe
    assert chosen_recipe is not None, "a chosen candidate was built from a recipe"
    return Report(model_sha256=sha256_file(model), output_sha256=sha256_file(out), chosen=chosen,
                  outcome=outcome_of(chosen, ordered), spread=round(timings["baseline"].spread, 4),
                  chosen_recipe=chosen_recipe, gate=gate, validation_inputs=len(validation),
                  input_source=input_source, onnxruntime_version=ort.__version__,
                  timing_rounds=rounds, timing_calls=calls,
                  duration_seconds=round(clock() - search.start, 3), candidates=ordered)
