"""The PodDisruptionBudget: voluntary disruptions (drains, node upgrades) take pods one
budget at a time. Pods that are not Ready may always be evicted, so a crash-looping
service never blocks a node drain."""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import ModelService
from modelship.render import names


def render_pod_disruption_budget(msvc: ModelService) -> dict[str, Any]:
    name = msvc.metadata.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": names.pod_disruption_budget(name),
            "namespace": msvc.metadata.namespace,
            "labels": names.labels(name, msvc.spec.runtime),
        },
        "spec": {
            "maxUnavailable": msvc.spec.disruption_budget.max_unavailable,
            "selector": {"matchLabels": names.selector(name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
