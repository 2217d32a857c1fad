"""Monitoring's Prometheus series, named in modelship.contracts (the operator reads them).

Collected at scrape time from the monitors' snapshots, like the server's other metrics.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from modelship.contracts import (
    CAPTURE_METRIC,
    DRIFT_REFERENCE_METRIC,
    DRIFT_SCORE_METRIC,
    DRIFT_WINDOW_METRIC,
    FEEDBACK_METRIC,
    FEEDBACK_OUTCOMES,
    QUALITY_LABELS_METRIC,
    QUALITY_METRIC,
)

from .monitor import Monitoring


class MonitoringCollector:
    def __init__(self, hub: Monitoring, models: object) -> None:
        self.hub = hub
        self.models = models  # callable: the served models (so every one has its series)

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        score = GaugeMetricFamily(DRIFT_SCORE_METRIC, "Drift of a feature's current window against the reference "
                                  "(test psi: population stability index; ks: Kolmogorov-Smirnov D).",
                                  labels=["model", "tensor", "test"])
        window = GaugeMetricFamily(DRIFT_WINDOW_METRIC, "Samples in the feature's current drift window.",
                                   labels=["model", "tensor"])
        ref = GaugeMetricFamily(DRIFT_REFERENCE_METRIC, "Samples of the drift reference; 0 while none is loaded or frozen.",
                                labels=["model"])
        quality = GaugeMetricFamily(QUALITY_METRIC, "The quality window's value of each metric.", labels=["model", "metric"])
        labels = GaugeMetricFamily(QUALITY_LABELS_METRIC, "Labels joined in the current quality window.", labels=["model"])
        feedback = CounterMetricFamily(FEEDBACK_METRIC, "Feedback items by outcome.", labels=["model", "outcome"])
        capture = CounterMetricFamily(CAPTURE_METRIC, "Captured records written to the sink or dropped.",
                                      labels=["model", "outcome"])
        samples = CounterMetricFamily("modelship_monitoring_samples", "Sampled requests profiled, or dropped "
                                      "because the profiler queue was full.", labels=["model", "outcome"])
        values = CounterMetricFamily("modelship_monitoring_values", "Values seen by the profiler that were NaN, "
                                     "infinite, or outside the reference's range.", labels=["model", "tensor", "kind"])
        for m in list(self.models()):  # type: ignore[operator]
            doc = self.hub.snapshot(m)
            name = doc["model"]
            ref.add_metric([name], doc["reference"]["samples"])
            for fname, f in doc["drift"]["features"].items():
                if "window_samples" in f:
                    window.add_metric([name, fname], f["window_samples"])
                if "psi" in f:
                    score.add_metric([name, fname, "psi"], f["psi"])
                    score.add_metric([name, fname, "ks"], f["ks"])
                for kind in ("nan", "inf", "out_of_range"):
                    values.add_metric([name, fname, kind], f[kind])
            for metric, v in doc["quality"]["metrics"].items():
                quality.add_metric([name, metric], v)
            labels.add_metric([name], doc["quality"]["labels"])
            for outcome in FEEDBACK_OUTCOMES:
                feedback.add_metric([name, outcome], doc["feedback"]["outcomes"].get(outcome, 0))
            if doc["capture"] is not None:
                capture.add_metric([name, "written"], doc["capture"]["written"])
                capture.add_metric([name, "dropped"], doc["capture"]["dropped"])
            samples.add_metric([name, "profiled"], doc["sampling"]["profiled"])
            samples.add_metric([name, "dropped"], doc["sampling"]["dropped"])
        yield from (score, window, ref, quality, labels, feedback, capture, samples, values)
