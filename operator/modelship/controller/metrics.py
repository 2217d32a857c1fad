"""The operator's own Prometheus metrics, served on `modelship run --metrics-port` (8080).

Reconciles (duration, errors) and the autoscaler (decisions by direction and reason, and per
service the observed latency against its SLO, the observed rate, the desired replicas). Here,
not in autoscale/, because the controller creates and serves them; the autoscaler gets them
passed in (its `DecisionMetrics`).
Each name is listed in docs/autoscaling.md. A registry per operator, so tests can run
several; prometheus-client objects are fine here (a few updates per reconcile or tick, not
per request).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from modelship.autoscale.decision import Decision, Policy

log = logging.getLogger("modelship.metrics")

RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def decision_reason(decision: Decision) -> str:
    """A small, fixed set of reason labels (the full sentence is in status and Events)."""
    if decision.held:
        return "metrics_missing"
    if decision.panic and decision.direction == "up":
        return "panic"
    if decision.limited:
        return "limited"
    if decision.direction == "up":
        return "load"
    if decision.direction == "down":
        return "stabilized_scale_down"
    return "steady"


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "modelship_operator_reconcile_duration_seconds", "Time of one reconcile of one ModelService.",
            buckets=RECONCILE_BUCKETS, registry=r)
        self.reconcile_errors = Counter(
            "modelship_operator_reconcile_errors", "Reconciles that failed, by kind: api (retried) or crash (a bug).",
            ["kind"], registry=r)
        self.decisions = Counter(
            "modelship_operator_scaling_decisions", "Builtin autoscaler decisions by direction and reason.",
            ["namespace", "modelservice", "direction", "reason"], registry=r)
        labels = ["namespace", "modelservice"]
        self.latency = Gauge("modelship_operator_observed_latency_seconds",
                             "Observed latency at the SLO's percentile (all pods of the service).",
                             labels + ["percentile"], registry=r)
        self.slo = Gauge("modelship_operator_slo_latency_seconds", "The SLO's latency target.",
                         labels + ["percentile"], registry=r)
        self.rate = Gauge("modelship_operator_observed_requests_per_second",
                          "Observed demand (answered + shed + backlog growth), all pods.", labels, registry=r)
        self.desired = Gauge("modelship_operator_desired_replicas", "Replicas the builtin autoscaler wants.",
                             labels, registry=r)
        self.max_replicas = Gauge("modelship_operator_max_replicas", "spec.autoscaling.maxReplicas.", labels,
                                  registry=r)
        self.capacity = Gauge("modelship_operator_capacity_per_replica",
                              "Requests/s per replica the autoscaler plans with (after online correction).",
                              labels, registry=r)
        # Monitoring (spec.monitoring): the conditions as 1 (True) / 0 (False), absent while Unknown, so the
        # chart's alerts fire on exactly what `kubectl get msvc` says, thresholds from each spec included.
        self.monitoring = Gauge("modelship_operator_monitoring_condition",
                                "DataDrift, QualityDegraded and CaptureDropping: 1 True, 0 False (absent: Unknown).",
                                labels + ["condition"], registry=r)

    def observe_decision(self, key: tuple[str, str], decision: Decision, policy: Policy) -> None:
        ns, name = key
        self.decisions.labels(ns, name, decision.direction, decision_reason(decision)).inc()
        self.desired.labels(ns, name).set(decision.desired)
        self.max_replicas.labels(ns, name).set(policy.max_replicas)
        self.capacity.labels(ns, name).set(decision.capacity_per_replica)
        self.slo.labels(ns, name, policy.percentile).set(policy.slo_seconds)
        if decision.observed_latency_seconds is not None:
            self.latency.labels(ns, name, policy.percentile).set(decision.observed_latency_seconds)
        if decision.observed_requests_per_second is not None:
            self.rate.labels(ns, name).set(decision.observed_requests_per_second)

    def observe_monitoring(self, key: tuple[str, str], conditions: dict[str, str | None]) -> None:
        """condition type -> "True" / "False" / None (Unknown: the series goes away)."""
        ns, name = key
        for condition, status in conditions.items():
            if status in ("True", "False"):
                self.monitoring.labels(ns, name, condition).set(1.0 if status == "True" else 0.0)
            elif (ns, name, condition) in self.monitoring._metrics:
                self.monitoring.remove(ns, name, condition)

    def forget(self, key: tuple[str, str]) -> None:
        """Drop a deleted service's series (a gauge would otherwise report it forever)."""
        for metric in (self.latency, self.slo, self.rate, self.desired, self.max_replicas, self.capacity,
                       self.decisions, self.monitoring):
            for labels in list(metric._metrics):  # prometheus-client keeps children by label tuple
                if tuple(labels[:2]) == key:
                    metric.remove(*labels)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Start /metrics in a daemon thread; None (and a warning) when the port is taken, so a
        busy port costs the metrics, not the operator."""
        try:
            return start_http_server(port, addr=addr, registry=self.registry)
        except OSError as error:
            log.warning("cannot serve metrics on %s:%d (%s); running without them "
                        "(use --metrics-port to pick another port, 0 to turn them off)", addr, port, error)
            return None
