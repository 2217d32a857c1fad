"""What the autoscaler publishes: capacity and its source, the settling that keeps a steady
service at zero status writes, and the status fields and conditions (contract C4)."""

from __future__ import annotations

import dataclasses

from modelship.api.v1alpha1 import ModelService
from modelship.autoscale import report
from modelship.autoscale.policy import policy_of
from modelship.render.capacity import DEFAULT_CAPACITY, Capacity, capacity_of


def msvc(**autoscaling) -> ModelService:  # noqa: ANN003
    return ModelService.model_validate({"metadata": {"name": "svc"}, "spec": {
        "model": {"uri": "https://h.example/m.onnx", "sha256": "a" * 64},
        "slo": {"latencyMilliseconds": 40, "percentile": "p99"},
        "autoscaling": {"enabled": True, **autoscaling}}})


MEASURED = {"optimization": {"capacity": {"requestsPerSecond": 812.0, "percentile": "p95"}}}


def test_capacity_source_order_spec_then_optimization_then_default() -> None:
    assert capacity_of(msvc(capacityPerReplica=50), MEASURED) == Capacity(50.0, "spec")
    assert capacity_of(msvc(), MEASURED) == Capacity(812.0, "optimization")
    assert capacity_of(msvc(), {"optimization": {"capacity": None}}) == Capacity(DEFAULT_CAPACITY, "default")
    assert capacity_of(msvc(), {"optimization": {"capacity": {"requestsPerSecond": True}}}).source == "default"


def test_policy_follows_the_spec() -> None:
    policy = policy_of(msvc(scaleDownStabilizationSeconds=120, intervalSeconds=5, panicThreshold=3),
                       capacity_of(msvc(), MEASURED))
    assert (policy.slo_seconds, policy.percentile, policy.capacity_per_replica) == (0.04, "p99", 812.0)
    assert (policy.scale_down_stabilization_seconds, policy.panic_threshold, policy.stale_after_seconds) == (120, 3, 15)


VIEW = report.View(engine="builtin", capacity_per_replica=100.0, capacity_source="optimization", reason="steady at 3",
                   desired=3, current=3, requests_per_second=236.0, latency_seconds=0.021, percentile="p95",
                   slo_milliseconds=50, max_replicas=8, limited=False)


def test_settle_ignores_wobble_and_publishes_what_matters() -> None:
    wobble = dataclasses.replace(VIEW, requests_per_second=251.0, latency_seconds=0.0225, reason="steady at 3: new numbers")
    assert report.settle(VIEW, wobble) is VIEW  # +6 % and +7 %: no status write
    for changed in (dict(requests_per_second=270.0), dict(desired=4), dict(limited=True),
                    dict(capacity_source="spec"), dict(latency_seconds=0.055), dict(last_scale_time="2026-01-01T00:00:00Z")):
        new = dataclasses.replace(VIEW, **changed)
        assert report.settle(VIEW, new) is new, changed
    near = dataclasses.replace(VIEW, latency_seconds=0.049)
    over = dataclasses.replace(near, latency_seconds=0.051)
    assert report.settle(near, over) is over  # +4 %, but it crosses the SLO


def test_status_fields_round_to_three_digits_and_none_removes() -> None:
    fields = report.status_fields(dataclasses.replace(VIEW, requests_per_second=236.4567, latency_seconds=0.0213456))
    assert fields["autoscaling"]["observedRequestsPerSecond"] == 236.0
    assert fields["latency"] == {"percentile": "p95", "observedMilliseconds": 21.3, "targetMilliseconds": 50}
    assert report.status_fields(None) == {"autoscaling": None, "latency": None}


def test_scaling_limited_messages_carry_no_observed_numbers() -> None:
    limited = report.limited_condition(dataclasses.replace(VIEW, limited=True))[0]
    assert (limited.type, limited.status, limited.reason) == ("ScalingLimited", "True", "SLOMissedAtMaxReplicas")
    other = report.limited_condition(dataclasses.replace(VIEW, limited=True, latency_seconds=0.9,
                                                         requests_per_second=999.0))[0]
    assert other.message == limited.message  # numbers move every tick; a message change is a write
    assert report.limited_condition(dataclasses.replace(VIEW, limited=None))[0].status == "Unknown"


def test_turning_autoscaling_off_clears_only_conditions_it_had_set() -> None:
    assert report.disabled_conditions([{"type": "Ready", "status": "True"}]) == []
    out = report.disabled_conditions([{"type": "ScalingLimited", "status": "True"}])
    assert [(c.type, c.status, c.reason) for c in out] == [("ScalingLimited", "False", "AutoscalingDisabled")]
