"""Render the HorizontalPodAutoscaler (engine hpa) or the KEDA ScaledObject (engine keda).

Pure, like every render. Both scale the Deployment on the same signal the builtin engine
plans with: requests per second per pod against a target of capacity x targetUtilization,
where capacity is spec.autoscaling.capacityPerReplica, else the optimize Job's measurement,
else the conservative default (render/capacity.py, the builtin engine's rule too). Both get the same behaviour: scale-up
without stabilization (double, or +4 pods, every 15 s), scale-down stabilized over
spec.autoscaling.scaleDownStabilizationSeconds.

The HPA reads a Pods metric, `modelship_requests_per_second`, which the cluster's
prometheus-adapter must serve (the chart ships the rule as optional values; docs/autoscaling.md
shows it). The ScaledObject asks Prometheus directly (KEDA's prometheus trigger), at
spec.autoscaling.prometheus.url, with the PromQL below.
"""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.contracts import DEMAND_OUTCOMES, POD_RATE_METRIC, REQUESTS_METRIC
from modelship.render import names
from modelship.render.capacity import resolve

HPA_API_VERSION = "autoscaling/v2"
KEDA_API_VERSION = "keda.sh/v1alpha1"


def target_per_pod(msvc: ModelService, measured: float | None) -> float:
    """requests/s per pod the HPA/KEDA aim at: capacity per replica x targetUtilization."""
    return resolve(msvc, measured).requests_per_second * msvc.spec.autoscaling.target_utilization


def quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as is, else in milli-units ("12500m" = 12.5)."""
    milli = max(1, round(value * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def behavior(msvc: ModelService) -> dict[str, Any]:
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                         {"type": "Pods", "value": 4, "periodSeconds": 15}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": msvc.spec.autoscaling.scale_down_stabilization_seconds,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 30}],
        },
    }


def demand_query(msvc: ModelService, window: str = "1m") -> str:
    """Total demand on the service's pods, requests/s (what KEDA divides by its threshold)."""
    settings = msvc.spec.autoscaling.prometheus
    pod_label = settings.pod_label if settings else "pod"
    namespace_label = settings.namespace_label if settings else "namespace"
    deployment = names.deployment(msvc.metadata.name)
    return (f'sum(rate({REQUESTS_METRIC}_total{{{namespace_label}="{msvc.metadata.namespace}",'
            f'{pod_label}=~"{deployment}-[a-z0-9]+-[a-z0-9]+",model="{msvc.spec.model.name}",'
            f'outcome=~"{"|".join(DEMAND_OUTCOMES)}"}}[{window}]))')


def render_hpa(msvc: ModelService, *, measured_capacity: float | None = None) -> dict[str, Any] | None:
    autoscaling = msvc.spec.autoscaling
    if not (autoscaling.enabled and autoscaling.engine == "hpa"):
        return None
    return _scaler(msvc, HPA_API_VERSION, "HorizontalPodAutoscaler", {
        # 0 needs the HPAScaleToZero feature gate; the HPA engine starts at 1.
        "minReplicas": max(1, autoscaling.min_replicas),
        "maxReplicas": autoscaling.max_replicas,
        "metrics": [{
            "type": "Pods",
            "pods": {
                "metric": {"name": POD_RATE_METRIC},
                "target": {"type": "AverageValue", "averageValue": quantity(target_per_pod(msvc, measured_capacity))},
            },
        }],
        "behavior": behavior(msvc),
    })


def render_scaled_object(msvc: ModelService, *, measured_capacity: float | None = None) -> dict[str, Any] | None:
    autoscaling = msvc.spec.autoscaling
    if not (autoscaling.enabled and autoscaling.engine == "keda"):
        return None
    if autoscaling.prometheus is None:  # the API refuses this spec; render cannot invent a server
        raise ValueError("spec.autoscaling.prometheus.url is required for engine keda")
    return _scaler(msvc, KEDA_API_VERSION, "ScaledObject", {
        "pollingInterval": 15,
        "cooldownPeriod": max(autoscaling.scale_down_stabilization_seconds, 30),
        "minReplicaCount": autoscaling.min_replicas,
        "maxReplicaCount": autoscaling.max_replicas,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(msvc)}},
        "triggers": [{
            "type": "prometheus",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": autoscaling.prometheus.url,
                "query": demand_query(msvc),
                "threshold": f"{target_per_pod(msvc, measured_capacity):g}",
            },
        }],
    })


def _scaler(msvc: ModelService, api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An autoscaler object named and labelled like the Deployment it scales, with `spec` after its target."""
    name = names.deployment(msvc.metadata.name)
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": msvc.metadata.namespace,
                     "labels": names.labels(msvc.metadata.name, msvc.spec.runtime)},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}, **spec},
    }
