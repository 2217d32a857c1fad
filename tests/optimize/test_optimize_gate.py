"""Accuracy gate: metrics and the pass/fail decision, table-tested on hand-computed figures."""

from __future__ import annotations

import numpy as np
import pytest

from modelship_server.optimize.gate import GateSpec, aggregate, cosine, decide, evaluate, max_abs, max_rel, top1_agreement

A = np.array([[1.0, 2.0, 3.0], [0.0, 5.0, -1.0]], np.float32)


@pytest.mark.parametrize("fn, ref, out, expected", [
    (max_abs, A, A, 0.0),
    (max_abs, A, A + np.array([[0, 0.5, 0], [0, 0, -2]], np.float32), 2.0),
    (max_rel, np.array([2.0, 4.0]), np.array([1.0, 5.0]), 0.5),
    (cosine, np.array([1.0, 0.0]), np.array([0.0, 1.0]), 0.0),
    (cosine, np.array([1.0, 2.0]), np.array([2.0, 4.0]), 1.0),
    (cosine, np.array([1.0, 2.0]), np.array([-1.0, -2.0]), -1.0),
    (cosine, np.zeros(3), np.zeros(3), 1.0),
    (cosine, np.zeros(3), np.ones(3), 0.0),
    (top1_agreement, A, A, 1.0),
    (top1_agreement, A, np.array([[3.0, 2.0, 1.0], [0.0, 5.0, -1.0]]), 0.5),
])
def test_metric(fn, ref, out, expected):
    assert fn(ref, out) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("metric, values, mean, worst", [
    ("cosine", [1.0, 0.9, 0.95], 0.95, 0.9),
    ("top1_agreement", [1.0, 0.5], 0.75, 0.5),
    ("max_abs", [0.1, 0.3], 0.2, 0.3),  # error metric: worst is the largest
    ("max_rel", [0.0], 0.0, 0.0),
])
def test_aggregate_mean_and_worst(metric, values, mean, worst):
    assert aggregate(metric, values) == pytest.approx((mean, worst))


@pytest.mark.parametrize("spec, mean, worst, passed, mentions", [
    (GateSpec(metric="cosine", threshold_mean=0.99, threshold_worst=0.98), 0.995, 0.985, True, "0.995"),
    (GateSpec(metric="cosine", threshold_mean=0.99, threshold_worst=0.98), 0.989, 0.985, False, "mean cosine 0.989"),
    (GateSpec(metric="cosine", threshold_mean=0.99, threshold_worst=0.98), 0.995, 0.97, False, "worst cosine 0.97"),
    (GateSpec(metric="cosine", threshold_mean=0.99, threshold_worst=0.98), 0.99, 0.98, True, "0.99"),  # bounds inclusive
    (GateSpec(metric="max_abs", threshold_mean=0.01, threshold_worst=0.05), 0.005, 0.04, True, "<="),
    (GateSpec(metric="max_abs", threshold_mean=0.01, threshold_worst=0.05), 0.005, 0.06, False, "worst max_abs 0.06"),
    (GateSpec(metric="top1_agreement", threshold_mean=1.0, threshold_worst=1.0), 0.9, 0.0, False, "mean top1"),
])
def test_decide(spec, mean, worst, passed, mentions):
    result = decide(spec, mean, worst)
    assert result.passed is passed
    assert (result.mean, result.worst) == (mean, worst)
    assert mentions in result.reason


def test_evaluate_takes_the_worst_output_and_reports_every_metric():
    ref = [[np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)]]
    # first output identical, second orthogonal: the input counts as cosine 0
    out = [[np.array([1.0, 0.0], np.float32), np.array([1.0, 0.0], np.float32)]]
    result = evaluate(GateSpec(), ref, out)
    assert not result.passed and result.worst == pytest.approx(0.0)
    assert set(result.figures) == {"cosine", "top1_agreement", "max_abs", "max_rel"}
    assert result.figures["max_abs"] == pytest.approx(1.0)


def test_evaluate_non_float_outputs_must_match_exactly():
    ref = [[np.array([1, 2], np.int64)]]
    assert evaluate(GateSpec(), ref, [[np.array([1, 2], np.int64)]]).passed
    assert not evaluate(GateSpec(), ref, [[np.array([1, 3], np.int64)]]).passed
