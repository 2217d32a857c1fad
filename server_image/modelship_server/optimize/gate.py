"""Accuracy gate: compare a candidate's outputs with the original's, pure functions only.

Optimizations such as int8 quantization can silently wreck a model; a candidate is kept only
if its outputs stay close to the original's, on average and on the worst input.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel

Metric = Literal["cosine", "top1_agreement", "max_abs", "max_rel"]
# Similarity metrics must stay above their threshold; error metrics below it.
HIGHER_IS_BETTER: dict[str, bool] = {"cosine": True, "top1_agreement": True, "max_abs": False, "max_rel": False}
METRICS: tuple[str, ...] = tuple(HIGHER_IS_BETTER)


def max_abs(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.max(np.abs(ref.astype(np.float64) - out.astype(np.float64)), initial=0.0))


def max_rel(ref: np.ndarray, out: np.ndarray, eps: float = 1e-6) -> float:
    ref64 = ref.astype(np.float64)
    return float(np.max(np.abs(ref64 - out.astype(np.float64)) / np.maximum(np.abs(ref64), eps), initial=0.0))


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0  # both all-zero: identical
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def top1_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Fraction of rows whose argmax over the last axis agrees (classification outputs)."""
    if ref.ndim == 0 or ref.shape[-1] == 0:
        return 1.0
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(out, axis=-1)))


_FUNCTIONS = {"cosine": cosine, "top1_agreement": top1_agreement, "max_abs": max_abs, "max_rel": max_rel}


def measure(metric: str, ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    """One input's figure over all its floating outputs (the worst output counts)."""
    values = [_FUNCTIONS[metric](r, o) for r, o in zip(ref, out) if np.asarray(r).dtype.kind == "f"]
    if not values:  # non-float outputs only: exact equality is the only sensible test
        same = all(np.array_equal(r, o) for r, o in zip(ref, out))
        return (1.0 if same else 0.0) if HIGHER_IS_BETTER[metric] else (0.0 if same else float("inf"))
    return min(values) if HIGHER_IS_BETTER[metric] else max(values)


class GateSpec(BaseModel):
    """Thresholds on the mean over inputs and on the worst input (min for similarity metrics,
    max for error metrics)."""

    metric: Metric = "cosine"
    threshold_mean: float = 0.99
    threshold_worst: float = 0.98


class GateResult(BaseModel):
    passed: bool
    metric: str
    mean: float
    worst: float
    reason: str
    figures: dict[str, float] = {}  # mean of every metric, for the report


def aggregate(metric: str, values: list[float]) -> tuple[float, float]:
    """(mean, worst) over inputs."""
    if not values:
        raise ValueError("no inputs to aggregate")
    worst = min(values) if HIGHER_IS_BETTER[metric] else max(values)
    return float(np.mean(values)), float(worst)


def decide(spec: GateSpec, mean: float, worst: float) -> GateResult:
    """Pass/fail for measured figures; the reason quotes figure and threshold."""
    higher = HIGHER_IS_BETTER[spec.metric]
    ok_mean = mean >= spec.threshold_mean if higher else mean <= spec.threshold_mean
    ok_worst = worst >= spec.threshold_worst if higher else worst <= spec.threshold_worst
    op = ">=" if higher else "<="
    failures = []
    if not ok_mean:
        failures.append(f"mean {spec.metric} {mean:.6g} fails {op} {spec.threshold_mean:g}")
    if not ok_worst:
        failures.append(f"worst {spec.metric} {worst:.6g} fails {op} {spec.threshold_worst:g}")
    reason = "; ".join(failures) if failures else (
        f"mean {spec.metric} {mean:.6g} {op} {spec.threshold_mean:g}, worst {worst:.6g} {op} {spec.threshold_worst:g}")
    return GateResult(passed=not failures, metric=spec.metric, mean=mean, worst=worst, reason=reason)


def evaluate(spec: GateSpec, refs: list[list[np.ndarray]], outs: list[list[np.ndarray]]) -> GateResult:
    """Gate a candidate: refs/outs are per input, the list of output arrays of each run."""
    if len(refs) != len(outs):
        raise ValueError(f"{len(refs)} reference runs but {len(outs)} candidate runs")
    result = decide(spec, *aggregate(spec.metric, [measure(spec.metric, r, o) for r, o in zip(refs, outs)]))
    result.figures = {m: aggregate(m, [measure(m, r, o) for r, o in zip(refs, outs)])[0] for m in METRICS}
    return result
