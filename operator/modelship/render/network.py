"""The NetworkPolicy, rendered only when `spec.networkPolicy.enabled`.

Serving ports (HTTP, gRPC) admit the listed peers, or the same namespace when none are
listed; the metrics port admits the listed metrics peers, or anyone (Prometheus usually
lives in another namespace) when none are listed.
"""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import ModelService, Peer
from modelship.render import names


def render_network_policy(msvc: ModelService) -> dict[str, Any] | None:
    settings = msvc.spec.network_policy
    if not settings.enabled:
        return None
    name = msvc.metadata.name
    serving_from = [_peer(p) for p in settings.allow_from or []] or [{"podSelector": {}}]
    metrics_rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": names.METRICS_PORT}]}
    if settings.allow_metrics_from:
        metrics_rule["from"] = [_peer(p) for p in settings.allow_metrics_from]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": names.network_policy(name),
            "namespace": msvc.metadata.namespace,
            "labels": names.labels(name, msvc.spec.runtime),
        },
        "spec": {
            "podSelector": {"matchLabels": names.selector(name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": serving_from,
                    "ports": [
                        {"protocol": "TCP", "port": names.HTTP_PORT},
                        {"protocol": "TCP", "port": names.GRPC_PORT},
                    ],
                },
                metrics_rule,
            ],
        },
    }


def _peer(peer: Peer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = peer.namespace_selector.wire()
    if peer.pod_selector is not None:
        out["podSelector"] = peer.pod_selector.wire()
    return out or {"podSelector": {}}
